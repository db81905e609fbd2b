//! The ext_authz gRPC door: Check bytes → zero-copy view → core request, `Decision` → `CheckResponse`. The one place decisions become gRPC.

mod server;
pub mod wire;

#[cfg(any(test, feature = "prost-oracle"))]
pub mod oracle;
#[cfg(test)]
mod wire_tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use crate::app::AppState;
use crate::core::authn::AuthnContext;
use crate::core::{Decision, HttpRequest, Reason, Snapshot};
use crate::telemetry::{DecisionRecord, Door};
use crate::traces::TraceContext;

pub use server::AuthorizationServer;
pub use wire::{CheckView, ViewError};

/// gRPC status codes used in `CheckResponse.status`.
const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

/// `envoy.service.auth.v3.Authorization` backed by the live policy set.
pub struct CheckService {
    state: Arc<AppState>,
}

impl CheckService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Decides one Check. It cannot fail: a view the core cannot judge is denied as malformed.
    pub async fn check(&self, view: CheckView) -> CheckResponse {
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
        let http = request.as_ref().ok().and_then(|request| request.http.as_ref());
        let (method, host, path) = http.map_or(("", "", ""), |http| (http.method, http.host, http.path));
        let header = |name: &str| http.and_then(|http| http.header(name));
        let request_id = header("x-request-id").unwrap_or_default();
        let record = DecisionRecord { door: Door::Grpc, request_id, method, host, path, decision: &decision, elapsed };
        self.state.decision_log.record(&record);
        if self.state.traces.is_on() {
            let context = TraceContext { traceparent: header("traceparent"), tracestate: header("tracestate") };
            self.state.traces.record_check(Door::Grpc, started_at, context, method, &decision);
        }
        check_response(&decision, self.state.answers_allow(&decision))
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

/// The one place a decision becomes a `CheckResponse`; `allow` is false for a deny that is
/// enforced (the global dry run answers every deny with an allow).
pub fn check_response(decision: &Decision, allow: bool) -> CheckResponse {
    let reason = decision.reason;
    let (code, http_response) = if allow {
        let ok = OkHttpResponse {
            headers: decision.headers_to_set.iter().map(|(name, value)| header_option(name, value)).collect(),
            headers_to_remove: decision.headers_to_remove.iter().map(ToString::to_string).collect(),
            query_parameters_to_remove: decision.query_parameters_to_remove.iter().map(ToString::to_string).collect(),
            ..OkHttpResponse::default()
        };
        (OK, HttpResponse::OkResponse(ok))
    } else {
        let denied = DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(decision.http_status()) }),
            headers: decision.response_headers.iter().map(|(name, value)| header_option(name, value)).collect(),
            body: decision.body().to_string(),
        };
        let code = match reason {
            Reason::InvalidPath => INVALID_ARGUMENT,
            Reason::InvalidToken => UNAUTHENTICATED,
            _ => PERMISSION_DENIED,
        };
        (code, HttpResponse::DeniedResponse(denied))
    };
    CheckResponse {
        status: Some(rpc::Status { code, message: String::new(), details: Vec::new() }),
        dynamic_metadata: Some(decision_metadata(decision)),
        http_response: Some(http_response),
    }
}

fn header_option(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: name.to_string(), value: value.to_string(), raw_value: Vec::new() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// `decision`, `reason` and `policy` for Envoy's access logs (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%`).
fn decision_metadata(decision: &Decision) -> Struct {
    let text = |value: String| Value { kind: Some(Kind::StringValue(value)) };
    let mut fields = HashMap::from([
        ("decision".to_string(), text(if decision.is_allow() { "allow" } else { "deny" }.into())),
        ("reason".to_string(), text(decision.reason.as_str().into())),
    ]);
    if let Some(policy) = &decision.policy {
        fields.insert("policy".to_string(), text(policy.to_string()));
    }
    Struct { fields }
}
