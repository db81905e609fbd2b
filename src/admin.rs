//! The admin door: `/healthz` (process up), `/readyz` (policies loaded, not shutting down), `/metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 200 once ready; the body names issuers that have no keys, whose tokens are refused.
async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let missing = state.engine.keys().missing();
    let mut body =
        if state.ready.load(Ordering::Acquire) { String::from("ready\n") } else { String::from("not ready\n") };
    for issuer in &missing {
        body.push_str(&format!("no keys for issuer {issuer}\n"));
    }
    let status = if state.ready.load(Ordering::Acquire) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state.engine.metrics().record_jwks_ages(&state.engine.keys().seconds_since_success());
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.engine.metrics().encode())
}
