//! The ext_authz gRPC door: Check bytes → zero-copy view → core request → `Decision` → `CheckResponse` bytes.

mod answer;
mod server;
pub mod wire;

#[cfg(any(test, feature = "prost-oracle"))]
pub mod oracle;
#[cfg(test)]
mod wire_tests;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::app::AppState;
use crate::core::authn::AuthnContext;
use crate::core::{Decision, HttpRequest, Reason, Snapshot};
use crate::telemetry::{DecisionRecord, Door};
use crate::traces::TraceContext;

pub use answer::CheckAnswer;
pub use server::AuthorizationServer;
pub use wire::{CheckView, ViewError};

/// `envoy.service.auth.v3.Authorization` backed by the live policy set.
pub struct CheckService {
    state: Arc<AppState>,
}

impl CheckService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Decides one Check. It cannot fail: a view the core cannot judge is denied as malformed.
    pub async fn check(&self, view: CheckView) -> CheckAnswer {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let live = self.state.policies.load();
        let request = view.request();
        let decision = match &request {
            Ok(request) => self.state.decide(&live.snapshot, request).await,
            Err(error) => malformed(error),
        };
        let elapsed = started.elapsed();
        self.state.metrics.record_check(Door::Grpc, &decision, elapsed);
        if let Ok(request) = &request {
            self.state.record_unidentified_workload(Door::Grpc, request, &decision);
        }
        let http = request.as_ref().ok().and_then(|request| request.http.as_ref());
        let (method, host, path) = http.map_or(("", "", ""), |http| (http.method, http.host, http.path));
        let header = |name: &str| http.and_then(|http| http.header(name));
        let request_id = header("x-request-id").unwrap_or_default();
        let redaction = live.snapshot.log_redaction();
        let record = DecisionRecord {
            door: Door::Grpc,
            request_id,
            method,
            host,
            path,
            decision: &decision,
            elapsed,
            redaction,
        };
        self.state.decision_log.record(&record);
        if self.state.traces.is_on() {
            let context = TraceContext { traceparent: header("traceparent"), tracestate: header("tracestate") };
            self.state.traces.record_check(Door::Grpc, started_at, context, method, &decision);
        }
        let allow = self.state.answers_allow(&decision);
        CheckAnswer { decision, allow }
    }
}

fn malformed(error: &ViewError) -> Decision {
    tracing::debug!(%error, "Denied a check request the core cannot judge");
    Decision::new(Reason::MalformedRequest, None)
}

/// Decides a decoded Check once, with no key refetch; a view the core cannot judge is denied.
pub fn decide_view(snapshot: &Snapshot, view: &CheckView, context: &AuthnContext<'_>) -> Decision {
    match view.request() {
        Ok(request) => snapshot.check(&request, context),
        Err(error) => malformed(&error),
    }
}

/// Fills an empty method, host, path or scheme from the pseudo-headers (`:authority`, else
/// `host`), as Envoy sends them in the header map.
fn with_pseudo_header_fallbacks(mut request: HttpRequest<'_>) -> HttpRequest<'_> {
    if request.method.is_empty() {
        request.method = request.header(":method").unwrap_or_default();
    }
    if request.host.is_empty() {
        request.host = request.header(":authority").or_else(|| request.header("host")).unwrap_or_default();
    }
    if request.path.is_empty() {
        request.path = request.header(":path").unwrap_or_default();
    }
    if request.scheme.is_empty() {
        request.scheme = request.header(":scheme").unwrap_or_default();
    }
    request
}
