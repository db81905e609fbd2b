//! The admin door: `/healthz` (process up), `/readyz` (policies loaded, not shutting down; names each issuer without keys and why, each introspection provider whose last call failed, and a session store that cannot be reached), `/metrics` (Prometheus text); never decides a check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::engine::Engine;

/// What the admin door reads.
#[derive(Debug)]
pub struct AdminState {
    engine: Arc<Engine>,
    /// True once the first policy set is live and every issuer's keys were fetched once (or the
    /// wait for them ran out), until shutdown starts; the server sets it.
    ready: Arc<AtomicBool>,
}

impl AdminState {
    /// The state of a server whose readiness `ready` holds.
    pub fn new(engine: Arc<Engine>, ready: Arc<AtomicBool>) -> Self {
        Self { engine, ready }
    }
}

/// The admin door's routes: `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 200 once ready; the body names each issuer that has no keys, whose tokens are refused, and
/// why its last fetch failed (its URLs without userinfo or query).
async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let ready = state.ready.load(Ordering::Acquire);
    let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
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
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.engine.metrics().encode())
}
