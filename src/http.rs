//! The HTTP forward-auth door: Traefik, nginx `auth_request`, ingress-nginx and Envoy's HTTP ext_authz. The one place decisions become HTTP answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request as HttpRequestIn, Response, StatusCode, header};

use crate::app::AppState;
use crate::core::matcher::IpMatch;
use crate::core::{Decision, HttpRequest, Peer, Request};
use crate::telemetry::{DecisionRecord, Door};
use crate::traces::TraceContext;

/// The header that lists, for Envoy, the request headers to strip on allow.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// Context extensions for the direct (Envoy HTTP) mode: `namespace=ns,app=web`.
const CONTEXT_HEADER: &str = "x-portcullis-context";

/// Every method and path is a check.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(check).with_state(state)
}

async fn check(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    incoming: HttpRequestIn<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let settings = &state.settings;
    let trusted = state.trusted_proxies.iter().any(|block| block.matches(peer.ip()));
    let original = OriginalRequest::read(&incoming, peer.ip(), trusted, &settings.http_path_prefix);
    let live = state.policies.load();
    let decision = state.decide(&live.snapshot, &original.request()).await;
    let elapsed = started.elapsed();
    state.metrics.record_check(Door::Http, &decision, elapsed);
    let request_id = incoming.headers().get("x-request-id").and_then(|id| id.to_str().ok()).unwrap_or_default();
    let (method, host, path) = (&original.method, &original.host, &original.path);
    let record = DecisionRecord { door: Door::Http, request_id, method, host, path, decision: &decision, elapsed };
    state.decision_log.record(&record);
    if state.traces.is_on() {
        let header = |name: &str| incoming.headers().get(name).and_then(|value| value.to_str().ok());
        let context = TraceContext { traceparent: header("traceparent"), tracestate: header("tracestate") };
        state.traces.record_check(Door::Http, started_at, context, method, &decision);
    }
    answer(&decision, state.answers_allow(&decision))
}

/// The request being authorized, as read from the forward-auth request.
#[derive(Debug, Default)]
struct OriginalRequest {
    method: String,
    scheme: String,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    source: Option<IpAddr>,
    context: HashMap<String, String>,
}

impl OriginalRequest {
    /// Reads the original request from forwarding headers (trusted peers only), else from the
    /// request itself.
    fn read(incoming: &HttpRequestIn<Body>, peer: IpAddr, trusted: bool, path_prefix: &str) -> Self {
        let headers = incoming.headers();
        let get = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
        let own_query = incoming.uri().query().unwrap_or_default();
        let mut original = Self {
            headers: readable_headers(headers),
            source: Some(peer),
            host: get("host").unwrap_or_default(),
            scheme: "http".into(),
            ..Self::default()
        };
        let forwarded_client =
            get("x-forwarded-for").and_then(|chain| chain.rsplit(',').next().and_then(|ip| ip.trim().parse().ok()));
        if let Some(client) = forwarded_client.filter(|_| trusted) {
            original.source = Some(client);
        }
        let forwarded_uri = get("x-forwarded-uri").filter(|_| trusted);
        let original_url = get("x-original-url").filter(|_| trusted);
        let original_uri = get("x-original-uri").filter(|_| trusted);
        if let Some(uri) = forwarded_uri {
            // Traefik forwardAuth.
            original.method = get("x-forwarded-method").unwrap_or_else(|| "GET".into());
            original.scheme = get("x-forwarded-proto").unwrap_or(original.scheme);
            original.host = get("x-forwarded-host").unwrap_or(original.host);
            original.path = uri;
            original.context = parse_pairs(own_query, '&');
        } else if let Some(url) = original_url {
            // ingress-nginx: the whole URL.
            original.method = get("x-original-method").unwrap_or_else(|| "GET".into());
            let (scheme, rest) = url.split_once("://").unwrap_or(("http", &url));
            let (authority, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
            original.scheme = scheme.into();
            original.host = authority.into();
            original.path = path.into();
            original.context = parse_pairs(own_query, '&');
        } else if let Some(uri) = original_uri {
            // nginx auth_request.
            original.method = get("x-original-method").unwrap_or_else(|| "GET".into());
            original.path = uri;
            original.context = parse_pairs(own_query, '&');
        } else {
            // Envoy's HTTP ext_authz: the request is the original, under an optional prefix.
            original.method = incoming.method().as_str().into();
            if trusted && let Some(scheme) = get("x-forwarded-proto") {
                original.scheme = scheme;
            }
            let target = incoming.uri().path_and_query().map_or("/", |target| target.as_str());
            original.path =
                target.strip_prefix(path_prefix).filter(|rest| rest.starts_with('/')).unwrap_or(target).into();
            if trusted {
                original.context = get(CONTEXT_HEADER).map(|pairs| parse_pairs(&pairs, ',')).unwrap_or_default();
            }
        }
        original
    }

    fn request(&self) -> Request<'_> {
        Request {
            source: Peer { address: self.source, ..Peer::default() },
            destination: Peer::default(),
            http: Some(HttpRequest {
                method: &self.method,
                scheme: &self.scheme,
                host: &self.host,
                path: &self.path,
                headers: self.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect(),
            }),
            sni: "",
            context_extensions: (!self.context.is_empty()).then_some(&self.context),
        }
    }
}

/// Headers whose value is text; names are lower case already.
fn readable_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| value.to_str().ok().map(|value| (name.as_str().to_string(), value.to_string())))
        .collect()
}

/// `a=1&b=2` (or with another separator) into a map; empty names are dropped.
fn parse_pairs(text: &str, separator: char) -> HashMap<String, String> {
    text.split(separator)
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (!name.trim().is_empty()).then(|| (name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The one place a decision becomes an HTTP answer; `allow` is false for an enforced deny.
fn answer(decision: &Decision, allow: bool) -> Response<Body> {
    let mut response = if allow {
        let mut response = Response::new(Body::empty());
        for (name, value) in &decision.headers_to_set {
            insert(response.headers_mut(), name, value);
        }
        if !decision.headers_to_remove.is_empty() {
            let names: Vec<&str> = decision.headers_to_remove.iter().map(|name| &**name).collect();
            insert(response.headers_mut(), HEADERS_TO_REMOVE, &names.join(","));
        }
        response
    } else {
        let mut response = Response::new(Body::from(decision.body()));
        *response.status_mut() = StatusCode::from_u16(decision.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        for (name, value) in &decision.response_headers {
            insert(response.headers_mut(), name, value);
        }
        response
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    // Names and values were checked when they were made; one that still fails is left out.
    if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        headers.insert(name, value);
    }
}

/// Parses the `trusted_proxies` setting.
pub fn trusted_proxies(entries: &[String]) -> Result<Vec<IpMatch>, String> {
    entries.iter().map(|entry| IpMatch::parse(entry)).collect()
}
