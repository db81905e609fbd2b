//! The ext_authz gRPC door: `CheckRequest` → core request, `Decision` → `CheckResponse`. The one place decisions become gRPC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{self, Peer as ProtoPeer};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use crate::app::AppState;
use crate::core::authn::AuthnContext;
use crate::core::{Decision, HttpRequest, Peer, Reason, Request, Snapshot, StrMap};
use crate::telemetry::{DecisionRecord, Door};
use crate::traces::TraceContext;

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
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let check = request.into_inner();
        let live = self.state.policies.load();
        let decision = match request_from_check(&check) {
            Some(request) => self.state.decide(&live.snapshot, &request).await,
            None => Decision::new(Reason::MalformedRequest, None),
        };
        let elapsed = started.elapsed();
        self.state.metrics.record_check(Door::Grpc, &decision, elapsed);
        let http = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let (method, host, path) = http.map_or(("", "", ""), |http| (&*http.method, &*http.host, &*http.path));
        let request_id = http.and_then(|http| http.headers.get("x-request-id")).map_or("", String::as_str);
        let record = DecisionRecord { door: Door::Grpc, request_id, method, host, path, decision: &decision, elapsed };
        self.state.decision_log.record(&record);
        if self.state.traces.is_on() {
            let header = |name: &str| http.and_then(|http| http.headers.get(name)).map(String::as_str);
            let context = TraceContext { traceparent: header("traceparent"), tracestate: header("tracestate") };
            self.state.traces.record_check(Door::Grpc, started_at, context, method, &decision);
        }
        Ok(tonic::Response::new(check_response(&decision, self.state.answers_allow(&decision))))
    }
}

/// Decides a check once, with no key refetch; a check without attributes is denied.
pub fn decide(snapshot: &Snapshot, check: &CheckRequest, context: &AuthnContext<'_>) -> Decision {
    match request_from_check(check) {
        Some(request) => snapshot.check(&request, context),
        None => Decision::new(Reason::MalformedRequest, None),
    }
}

/// Borrows the attributes of a `CheckRequest`; `None` when it has none.
pub fn request_from_check(check: &CheckRequest) -> Option<Request<'_>> {
    let AttributeContext {
        source,
        destination,
        request,
        context_extensions,
        metadata_context: _,
        route_metadata_context: _,
        tls_session,
    } = check.attributes.as_ref()?;
    Some(Request {
        source: peer(source.as_ref()),
        destination: peer(destination.as_ref()),
        http: request.as_ref().and_then(|request| request.http.as_ref()).map(http_request),
        sni: tls_session.as_ref().map_or("", |tls| tls.sni.as_str()),
        context_extensions: StrMap::from(context_extensions),
    })
}

fn peer(peer: Option<&ProtoPeer>) -> Peer<'_> {
    let Some(ProtoPeer { address, service: _, labels, principal, certificate: _ }) = peer else {
        return Peer::default();
    };
    let socket = address.as_ref().and_then(|address| match &address.address {
        Some(address::Address::SocketAddress(socket)) => Some(socket),
        _ => None,
    });
    let port = socket.and_then(|socket| match socket.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(port)) => u16::try_from(port).ok(),
        _ => None,
    });
    Peer {
        address: socket.and_then(|socket| socket.address.parse().ok()),
        port,
        principal,
        labels: StrMap::from(labels),
    }
}

/// Reads Envoy's HTTP attributes. Envoy puts pseudo-headers in the header map and the query
/// inside `path`; with `encode_raw_headers` the headers come in `header_map` instead.
fn http_request(http: &attribute_context::HttpRequest) -> HttpRequest<'_> {
    let attribute_context::HttpRequest {
        id: _,
        method,
        headers,
        header_map,
        path,
        host,
        scheme,
        query: _,
        fragment: _,
        size: _,
        protocol: _,
        body: _,
        raw_body: _,
    } = http;
    let mut header_list: Vec<(&str, &str)> =
        headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    if header_list.is_empty()
        && let Some(map) = header_map
    {
        // A value that is not UTF-8 cannot match any pattern; it is left out.
        header_list.extend(map.headers.iter().filter_map(|header| {
            let value = if header.raw_value.is_empty() {
                Some(header.value.as_str())
            } else {
                std::str::from_utf8(&header.raw_value).ok()
            };
            value.map(|value| (header.key.as_str(), value))
        }));
    }
    let mut request = HttpRequest { method, scheme, host, path, headers: Vec::new() };
    let pseudo = |name: &str| header_list.iter().find(|(key, _)| *key == name).map(|&(_, value)| value);
    if request.method.is_empty() {
        request.method = pseudo(":method").unwrap_or_default();
    }
    if request.host.is_empty() {
        request.host = pseudo(":authority").or_else(|| pseudo("host")).unwrap_or_default();
    }
    if request.path.is_empty() {
        request.path = pseudo(":path").unwrap_or_default();
    }
    if request.scheme.is_empty() {
        request.scheme = pseudo(":scheme").unwrap_or_default();
    }
    request.headers = header_list;
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
