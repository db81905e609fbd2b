//! The admin door: `/healthz` (process up), `/readyz` (policies loaded, not shutting down; names each issuer without keys and why, each introspection provider whose last call failed, a session store that cannot be reached, and each data source not loaded yet), `/metrics` (Prometheus text), and with revocation on, `/revocations` (admin token) and the back-channel logout of bearer-token issuers; never decides a check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::data::Store;
use crate::engine::Engine;
use crate::revocation::Revocations;
use crate::revocation::admin::AdminAnswer;

/// What the admin door reads.
#[derive(Debug)]
pub struct AdminState {
    engine: Arc<Engine>,
    /// True once the first policy set is live and every issuer's keys were fetched once (or the
    /// wait for them ran out), until shutdown starts; the server sets it.
    ready: Arc<AtomicBool>,
    /// The live data: a declared source never loaded holds readiness back for a while.
    data: Arc<Store>,
}

impl AdminState {
    /// The state of a server whose readiness `ready` holds, reading its data sources in `data`.
    pub fn new(engine: Arc<Engine>, ready: Arc<AtomicBool>, data: Arc<Store>) -> Self {
        Self { engine, ready, data }
    }
}

/// The longest body the revocation endpoints read.
const REVOCATION_BODY_LIMIT: usize = 16 * 1024;

/// The admin door's routes: `/healthz`, `/readyz`, `/metrics`; with an admin token,
/// `GET`/`POST /revocations`; with logout token issuers, their back-channel logout endpoint.
pub fn router(state: Arc<AdminState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if let Some(revocations) = state.engine.revocations() {
        let config = revocations.config();
        if config.admin_token.is_some() {
            router = router.route("/revocations", get(list_revocations).post(add_revocation));
        }
        if !config.logout_token_issuers.is_empty() {
            router = router.route(&config.back_channel_logout_path, post(back_channel_logout));
        }
    }
    router.layer(DefaultBodyLimit::max(REVOCATION_BODY_LIMIT)).with_state(state)
}

/// An answer of the revocation endpoints, as JSON.
fn json_answer(answer: AdminAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], answer.json).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The revocation list, when the request carries the admin token.
fn admitted<'s>(state: &'s AdminState, headers: &HeaderMap) -> Option<&'s Arc<Revocations>> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    state.engine.revocations().filter(|revocations| revocations.admits_admin(authorization))
}

/// The answer to a caller without the admin token.
fn unauthorized() -> Response {
    json_answer(AdminAnswer { status: 401, json: r#"{"error":"the admin token is required"}"#.into() })
}

async fn list_revocations(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match admitted(&state, &headers) {
        Some(revocations) => json_answer(revocations.admin_list(query.as_deref().unwrap_or_default())),
        None => unauthorized(),
    }
}

async fn add_revocation(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    match admitted(&state, &headers) {
        Some(revocations) => json_answer(revocations.admin_add(&body).await),
        None => unauthorized(),
    }
}

async fn back_channel_logout(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    match state.engine.revocations() {
        Some(revocations) => json_answer(revocations.back_channel_logout(content_type, &body).await),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// 200 once ready; the body names each issuer that has no keys, whose tokens are refused, and
/// why its last fetch failed (its URLs without userinfo or query), and each data source not
/// loaded yet. A source whose first load is under way holds readiness back for
/// `data.ready_timeout_secs` after it was declared; once an attempt failed, or after that bound,
/// it is named, not failed (as an issuer without keys is): the checks that read it fail closed.
async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let bound = std::time::Duration::from_secs(state.engine.settings().data.ready_timeout_secs);
    let not_loaded = state.data.not_loaded();
    let ready = state.ready.load(Ordering::Acquire)
        && not_loaded.iter().all(|source| source.failure.is_some() || source.waited >= bound);
    let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
    for source in not_loaded {
        let cause = source.failure.as_deref().unwrap_or("its first load has not ended");
        body.push_str(&format!("data source {} ({}) not loaded: {cause}\n", source.name, source.declared_at));
    }
    for (issuer, cause) in state.engine.keys().missing_with_causes() {
        let cause = cause.as_deref().unwrap_or("its first fetch has not ended");
        body.push_str(&format!("no keys for issuer {issuer}: {cause}\n"));
    }
    // Named, not failed, as an issuer without keys is: other credentials still work.
    for (issuer, cause) in state.engine.introspection().map(|introspection| introspection.failing()).unwrap_or_default()
    {
        body.push_str(&format!("introspection failing for issuer {issuer}: {cause}\n"));
    }
    // Named, not failed: token checks and sessions' local copies still work without Redis.
    if let Some(problem) = state.engine.sso().and_then(|sso| sso.session_store_problem()) {
        body.push_str(&format!("session store unavailable: {problem}\n"));
    }
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    state.engine.metrics().record_jwks_ages(&state.engine.keys().seconds_since_success());
    state.engine.metrics().record_data_ages(&state.data.ages());
    if let Some(revocations) = state.engine.revocations() {
        state.engine.metrics().record_revocation_list_age(revocations.age_seconds());
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.engine.metrics().encode())
}
