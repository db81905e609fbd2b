//! The HTTP forward-auth door: Traefik, nginx `auth_request`, ingress-nginx and Envoy's HTTP ext_authz. The one place decisions become HTTP answers (a denial's status, body and challenge as [`crate::doors::denial`] words them); never decides (the engine does).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request as HttpRequestIn, Response, StatusCode, header};

use crate::core::matcher::IpMatch;
use crate::core::{Decision, HttpRequest, Peer, Request, StrMap};
use crate::doors::denial::{Denial, Redirects};
use crate::engine::{Engine, Received};
use crate::settings::HttpMode;
use crate::sso::{EndpointRequest, LoginAnswer};
use crate::telemetry;

/// The header that lists, for Envoy, the request headers to strip on allow.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// Context extensions for the direct (Envoy HTTP) mode: `namespace=ns,app=web`.
const CONTEXT_HEADER: &str = "x-portcullis-context";
const FORWARDED_URI: &str = "x-forwarded-uri";
const ORIGINAL_URL: &str = "x-original-url";
const ORIGINAL_URI: &str = "x-original-uri";
/// The longest body a login endpoint reads (a back-channel logout's form with its token).
const MAX_ENDPOINT_BODY_BYTES: usize = 64 * 1024;

impl HttpMode {
    /// The dialect to read, given which headers are present; `None` when `auto` finds more
    /// than one dialect (ambiguous: a client may have added one).
    fn dialect(self, present: impl Fn(&str) -> bool) -> Option<HttpMode> {
        if self != HttpMode::Auto {
            return Some(self);
        }
        let found: Vec<HttpMode> = [
            (FORWARDED_URI, HttpMode::Traefik),
            (ORIGINAL_URL, HttpMode::IngressNginx),
            (ORIGINAL_URI, HttpMode::Nginx),
        ]
        .into_iter()
        .filter(|(header, _)| present(header))
        .map(|(_, mode)| mode)
        .collect();
        match found.as_slice() {
            [] => Some(HttpMode::Envoy),
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// What the HTTP door needs beside the engine: which peers' forwarding headers it believes,
/// the dialect it reads, and the prefix Envoy's HTTP mode puts before the original path.
#[derive(Debug, Clone)]
struct HttpDoor {
    engine: Arc<Engine>,
    trusted_proxies: Arc<[IpMatch]>,
    mode: HttpMode,
    path_prefix: Arc<str>,
}

/// Every method and path is a check, read in the dialect of `mode`, believing the forwarding
/// headers of `trusted_proxies` only.
pub fn router(engine: Arc<Engine>, trusted_proxies: Vec<IpMatch>, mode: HttpMode) -> Router {
    let path_prefix = engine.settings().http_path_prefix.as_str().into();
    Router::new().fallback(check).with_state(HttpDoor {
        engine,
        trusted_proxies: trusted_proxies.into(),
        mode,
        path_prefix,
    })
}

async fn check(
    State(door): State<HttpDoor>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    incoming: HttpRequestIn<Body>,
) -> Response<Body> {
    if let Some(sso) = door.engine.sso()
        && let Some(endpoint) = sso.endpoint(incoming.uri().path()).map(str::to_string)
    {
        let (parts, body) = incoming.into_parts();
        // Only a POST has a body worth reading (a back-channel logout's token); one too long is
        // read as none, and refused.
        let body = match parts.method {
            Method::POST => axum::body::to_bytes(body, MAX_ENDPOINT_BODY_BYTES).await.unwrap_or_default(),
            _ => Bytes::new(),
        };
        let cookies: Vec<&str> =
            parts.headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok()).collect();
        let request = EndpointRequest {
            endpoint: &endpoint,
            method: parts.method.as_str(),
            query: parts.uri.query().unwrap_or_default(),
            cookies: &cookies,
            content_type: parts.headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()),
            body: &body,
        };
        return login_answer(sso.serve(request).await);
    }
    let trusted = door.trusted_proxies.iter().any(|block| block.matches(peer.ip()));
    let original = OriginalRequest::read(&incoming, peer.ip(), trusted, door.mode, &door.path_prefix);
    let request = original.request();
    let received = match &original.context {
        Ok(_) => Received::Judgeable(&request),
        Err(error) => {
            tracing::debug!(%error, "Denied a forward-auth request with a malformed context");
            Received::Malformed(Some(&request))
        }
    };
    let outcome = door.engine.check(telemetry::Door::Http, received).await;
    answer(&outcome.decision, outcome.allow, original.redirects)
}

/// The request being authorized, as read from the forward-auth request.
#[derive(Debug)]
struct OriginalRequest {
    method: String,
    scheme: String,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    source: Option<IpAddr>,
    /// The workload's context: from the auth request's query, or `x-portcullis-context`.
    context: Result<HashMap<String, String>, ContextError>,
    /// Whether the proxy that asked passes a redirect on to the browser.
    redirects: Redirects,
}

impl Default for OriginalRequest {
    fn default() -> Self {
        Self {
            method: String::new(),
            scheme: String::new(),
            host: String::new(),
            path: String::new(),
            headers: Vec::new(),
            source: None,
            context: Ok(HashMap::new()),
            redirects: Redirects::Passed,
        }
    }
}

impl OriginalRequest {
    /// Reads the original request: from the forwarding headers of `mode` (trusted peers only),
    /// else from the request itself. In `auto` mode, headers of two dialects at once are
    /// ambiguous (a client may have added one): the path is made invalid, which denies. A
    /// forwarding header that is present but unreadable does the same, rather than falling
    /// back to the auth request's own path.
    fn read(incoming: &HttpRequestIn<Body>, peer: IpAddr, trusted: bool, mode: HttpMode, path_prefix: &str) -> Self {
        let headers = incoming.headers();
        let get = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
        let own_query = incoming.uri().query().unwrap_or_default();
        let mut original = Self {
            headers: readable_headers(headers, trusted),
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
        let dialect = if trusted { mode.dialect(|name| headers.contains_key(name)) } else { Some(HttpMode::Envoy) };
        // nginx is told 401 in its mode whoever asks: a redirect would be its own 500.
        let is_nginx = |mode| matches!(mode, Some(HttpMode::Nginx | HttpMode::IngressNginx));
        if is_nginx(Some(mode)) || is_nginx(dialect) {
            original.redirects = Redirects::Refused;
        }
        // A present but unreadable forwarded target becomes an empty path: denied as invalid.
        let target =
            |name: &str| if headers.contains_key(name) { get(name).unwrap_or_default() } else { String::new() };
        match dialect {
            None => {
                original.method = incoming.method().as_str().into();
                // Ambiguous forwarding headers: judged as an invalid path.
                original.path = String::new();
            }
            Some(HttpMode::Traefik) => {
                original.method = get("x-forwarded-method").unwrap_or_else(|| "GET".into());
                original.scheme = get("x-forwarded-proto").unwrap_or(original.scheme);
                original.host = get("x-forwarded-host").unwrap_or(original.host);
                original.path = target(FORWARDED_URI);
                original.context = parse_context(own_query, '&');
            }
            Some(HttpMode::IngressNginx) => {
                original.method = get("x-original-method").unwrap_or_else(|| "GET".into());
                let url = target(ORIGINAL_URL);
                let (scheme, rest) = url.split_once("://").unwrap_or(("http", &url));
                let (authority, path) = rest.find('/').map_or((rest, ""), |at| (&rest[..at], &rest[at..]));
                original.scheme = scheme.into();
                original.host = authority.into();
                original.path = path.into();
                original.context = parse_context(own_query, '&');
            }
            Some(HttpMode::Nginx) => {
                original.method = get("x-original-method").unwrap_or_else(|| "GET".into());
                // nginx's own `$scheme`: a login over TLS comes back to the `https://` URL.
                original.scheme = get("x-forwarded-proto").unwrap_or(original.scheme);
                original.path = target(ORIGINAL_URI);
                original.context = parse_context(own_query, '&');
            }
            Some(HttpMode::Envoy | HttpMode::Auto) => {
                // Envoy's HTTP ext_authz: the request is the original, under an optional prefix.
                original.method = incoming.method().as_str().into();
                if trusted && let Some(scheme) = get("x-forwarded-proto") {
                    original.scheme = scheme;
                }
                let target = incoming.uri().path_and_query().map_or("/", |target| target.as_str());
                original.path =
                    target.strip_prefix(path_prefix).filter(|rest| rest.starts_with('/')).unwrap_or(target).into();
                if trusted {
                    original.context = context_header(headers);
                }
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
                joined_headers: false,
            }),
            sni: "",
            context_extensions: self.context.as_ref().map(StrMap::from).unwrap_or_default(),
        }
    }
}

/// Headers whose value is text, one entry per value as received: a repeated header is judged
/// value by value, as Envoy's RBAC judges it, and a second `Authorization` cannot hide behind
/// the first. `x-forwarded-for` from an untrusted peer is dropped: it must not name the client.
fn readable_headers(headers: &HeaderMap, trusted: bool) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| trusted || name.as_str() != "x-forwarded-for")
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

/// A workload context that cannot be read without guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// A key given twice, whatever its values.
    #[error("context key `{0}` is given more than once")]
    DuplicateKey(String),
    /// The header's value is not visible ASCII.
    #[error("`x-portcullis-context` is not text")]
    Unreadable,
}

/// `a=1&b=2` (or with another separator) into a map; empty names are dropped. A name given
/// twice is an error: taking either value would let a client choose the workload.
pub fn parse_context(text: &str, separator: char) -> Result<HashMap<String, String>, ContextError> {
    let mut context = HashMap::new();
    for pair in text.split(separator) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        if context.insert(name.to_string(), value.trim().to_string()).is_some() {
            return Err(ContextError::DuplicateKey(name.to_string()));
        }
    }
    Ok(context)
}

/// The `x-portcullis-context` header, every copy of it, so that a key repeated across two
/// copies is seen; a value that is not text is refused.
fn context_header(headers: &HeaderMap) -> Result<HashMap<String, String>, ContextError> {
    let copies =
        headers.get_all(CONTEXT_HEADER).iter().map(|value| value.to_str().map_err(|_| ContextError::Unreadable));
    parse_context(&copies.collect::<Result<Vec<_>, _>>()?.join(","), ',')
}

/// The one place a decision becomes an HTTP answer; `allow` is false for an enforced deny;
/// `redirects` says whether a login may be offered with a redirect.
fn answer(decision: &Decision, allow: bool, redirects: Redirects) -> Response<Body> {
    let mut response = if allow {
        let mut response = Response::new(Body::empty());
        let mut to_remove: Vec<&str> = decision.headers_to_remove.iter().map(|name| &**name).collect();
        for (name, value) in &decision.headers_to_set {
            if !insert(response.headers_mut(), name, value) {
                // Not sent, so stripped: the client's own copy must not reach the service.
                to_remove.push(name);
            }
        }
        if !to_remove.is_empty() {
            insert(response.headers_mut(), HEADERS_TO_REMOVE, &to_remove.join(","));
        }
        response
    } else {
        let denial = Denial::refusing(decision).behind(redirects);
        let mut response = Response::new(Body::from(denial.body));
        *response.status_mut() = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if let Some((name, value)) = &denial.challenge {
            insert(response.headers_mut(), name, value);
        }
        response
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A login endpoint's answer in HTTP.
fn login_answer(answer: LoginAnswer) -> Response<Body> {
    let (status, body, content_type, location, cookies) = match answer {
        LoginAnswer::Redirect { location, cookies } => {
            (StatusCode::FOUND, String::new(), "text/plain", Some(location), cookies)
        }
        LoginAnswer::Refused { status, message, cookies } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, message.to_string(), "text/plain", None, cookies)
        }
        LoginAnswer::UserInfo { json } => (StatusCode::OK, json, "application/json", None, Vec::new()),
        LoginAnswer::Page { status, html } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            (status, html, "text/html; charset=utf-8", None, Vec::new())
        }
        LoginAnswer::Json { status, json } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, json.to_string(), "application/json", None, Vec::new())
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The login's pages hold no script, no style and no image: nothing else may run in them.
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'"));
    if let Some(location) = location {
        insert(headers, header::LOCATION.as_str(), &location);
    }
    for cookie in cookies {
        if let Ok(value) = HeaderValue::try_from(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Sets a header; false when the name or value cannot be sent (they were checked when made).
fn insert(headers: &mut HeaderMap, name: &str, value: &str) -> bool {
    match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
            true
        }
        _ => false,
    }
}

/// Parses the `trusted_proxies` setting.
pub fn trusted_proxies(entries: &[String]) -> Result<Vec<IpMatch>, String> {
    entries.iter().map(|entry| IpMatch::parse(entry)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_pairs_are_read_with_either_separator() {
        let header = parse_context("namespace=ns, app = web,,flag", ',');
        let expected = [("namespace", "ns"), ("app", "web"), ("flag", "")];
        assert_eq!(header, Ok(expected.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()));
        assert_eq!(parse_context("namespace=ns&app=web", '&').map(|context| context.len()), Ok(2));
    }

    #[test]
    fn a_context_key_given_twice_is_an_error_whatever_its_values() {
        for (text, separator) in
            [("namespace=a,namespace=b", ','), ("namespace=a&app=x&namespace=a", '&'), ("k,k", ',')]
        {
            let duplicate = text.split(separator).next().and_then(|pair| pair.split('=').next()).unwrap_or_default();
            assert_eq!(parse_context(text, separator), Err(ContextError::DuplicateKey(duplicate.into())), "{text}");
        }
        assert_eq!(
            parse_context("namespace=a, namespace =b", ','),
            Err(ContextError::DuplicateKey("namespace".into()))
        );
    }
}
