//! The one outbound HTTP client: fetches a small document (a key set, a discovery document) over HTTP with a per-request timeout, a size cap, no redirects and link-local and metadata addresses refused; its errors name their cause and never carry a credential of the URL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::{Method, Url};

/// The bounds of every outbound request.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// The connect timeout, and the whole request's unless the caller gives its own.
    pub timeout: Duration,
    /// The largest body read; a longer one is refused.
    pub max_bytes: usize,
    /// Allow link-local and cloud-metadata addresses as targets.
    pub allow_link_local: bool,
}

/// Why a fetch failed. Every URL in it went through [`redact_url`]: no userinfo, no query.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The HTTP client cannot be built (no TLS roots, say).
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The URL cannot be parsed, or is not `http` or `https`.
    #[error("invalid URL `{url}`")]
    BadUrl {
        /// The URL, redacted.
        url: String,
    },
    /// The URL names a link-local or metadata target, and the client does not allow those.
    #[error("`{url}` refused: {target}; link-local and metadata targets are not allowed")]
    Refused {
        /// The URL, redacted.
        url: String,
        /// What is refused: the address, the host name, or what the host resolves to.
        target: String,
    },
    /// The request failed before an answer: DNS, connection, TLS, a refused resolved address or
    /// the timeout.
    #[error("{method} `{url}`: {}", describe_request_error(.source, *.timeout))]
    Request {
        /// The request's method.
        method: Method,
        /// The URL, redacted.
        url: String,
        /// The failure, with its causes.
        source: reqwest::Error,
        /// The request's timeout, to say it when it ran out.
        timeout: Duration,
    },
    /// The answer's status is not 2xx.
    #[error("{method} `{url}`: status {status}")]
    Status {
        /// The request's method.
        method: Method,
        /// The URL, redacted.
        url: String,
        /// The answer's status.
        status: u16,
    },
    /// A 400 or 401 whose JSON body names an OAuth 2.0 error (RFC 6749 5.2), such as
    /// `invalid_grant`.
    #[error("{method} `{url}`: status {status}: `{error}`")]
    OAuth {
        /// The request's method.
        method: Method,
        /// The URL, redacted.
        url: String,
        /// The answer's status.
        status: u16,
        /// The `error` code (printable ASCII, at most 64 characters).
        error: Box<str>,
    },
    /// The body is longer than the cap.
    #[error("{method} `{url}`: body over {limit} bytes")]
    TooLarge {
        /// The request's method.
        method: Method,
        /// The URL, redacted.
        url: String,
        /// The cap, in bytes.
        limit: usize,
    },
    /// The body is not UTF-8.
    #[error("`{url}`: body is not UTF-8")]
    NotUtf8 {
        /// The URL, redacted.
        url: String,
    },
    /// The body is not the JSON document asked for.
    #[error("`{url}`: not JSON: {message}")]
    NotJson {
        /// The URL, redacted.
        url: String,
        /// What the JSON parser says.
        message: String,
    },
}

/// The HTTP client every outbound fetch goes through.
#[derive(Debug, Clone)]
pub struct Outbound {
    client: reqwest::Client,
    limits: OutboundLimits,
}

impl Outbound {
    /// A client with these bounds, connecting only to addresses they allow.
    pub fn new(limits: OutboundLimits) -> Result<Self, OutboundError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout)
            .redirect(reqwest::redirect::Policy::none());
        let client = if limits.allow_link_local { client } else { client.dns_resolver(MetadataRefusingResolver) };
        let client = client.build().map_err(|error| OutboundError::Client(error.without_url()))?;
        Ok(Self { client, limits })
    }

    /// The bounds this client was built with.
    pub fn limits(&self) -> &OutboundLimits {
        &self.limits
    }

    /// GET `url` as UTF-8 text of at most `max_bytes`, within `timeout`; a redirect is an
    /// error status, not followed.
    pub async fn get_text(&self, url: &str, timeout: Duration) -> Result<String, OutboundError> {
        let body = self.send(Method::GET, url, timeout, |request| request).await?;
        String::from_utf8(body).map_err(|_| OutboundError::NotUtf8 { url: redact_url(url) })
    }

    /// [`Self::get_text`], parsed as JSON.
    pub async fn get_json(&self, url: &str, timeout: Duration) -> Result<serde_json::Value, OutboundError> {
        let text = self.get_text(url, timeout).await?;
        serde_json::from_str(&text)
            .map_err(|error| OutboundError::NotJson { url: redact_url(url), message: error.to_string() })
    }

    /// GET `url` with `headers` (an API's `Authorization`, `Accept`...; never in an error),
    /// parsed as JSON; refused as [`Self::get_text`] refuses, never redirected.
    pub async fn get_json_with_headers(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<serde_json::Value, OutboundError> {
        let body = self.send(Method::GET, url, timeout, |request| with_headers(request, headers)).await?;
        serde_json::from_slice(&body)
            .map_err(|error| OutboundError::NotJson { url: redact_url(url), message: error.to_string() })
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`) to `url`, authenticated with HTTP Basic
    /// as `client` when given (the secret never reaches an error), and reads a JSON answer of at
    /// most `max_bytes`; refused as [`Self::get_text`] refuses, never redirected.
    pub async fn post_form_json(
        &self,
        url: &str,
        form: &[(&str, &str)],
        client: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<serde_json::Value, OutboundError> {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let body = self
            .send(Method::POST, url, timeout, |request| {
                let request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(reqwest::header::ACCEPT, "application/json")
                    .body(body);
                match client {
                    // RFC 6749 section 2.3.1: both form-encoded before Basic encoding.
                    Some((id, secret)) => request.basic_auth(form_encoded(id), Some(form_encoded(secret))),
                    None => request,
                }
            })
            .await?;
        serde_json::from_slice(&body)
            .map_err(|error| OutboundError::NotJson { url: redact_url(url), message: error.to_string() })
    }

    /// GET `url` with `headers` and, when given, `If-None-Match: etag`: `NotModified` for a 304,
    /// else the body (at most `max_bytes`) and its `ETag`; refused as [`Self::get_text`] refuses.
    pub async fn get_if_none_match(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<Conditional, OutboundError> {
        let mut response = self
            .respond(Method::GET, url, timeout, |request| {
                let request = with_headers(request, headers);
                match etag {
                    Some(etag) => request.header(reqwest::header::IF_NONE_MATCH, etag),
                    None => request,
                }
            })
            .await?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Conditional::NotModified);
        }
        let response_etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|value| value.to_str().ok())
            .map(ToString::to_string);
        let body = self.read_success(&Method::GET, url, timeout, &mut response).await?;
        Ok(Conditional::Body { etag: response_etag, body })
    }

    /// GET `url` with `headers` and hands back the answer's body as it arrives, for a stream that
    /// stays open (a changes feed): the request may last `timeout`; an answer that is not 2xx is
    /// an error. The size cap is the caller's, per line.
    pub async fn open_stream(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<BodyStream, OutboundError> {
        let response = self.respond(Method::GET, url, timeout, |request| with_headers(request, headers)).await?;
        if !response.status().is_success() {
            return Err(OutboundError::Status {
                method: Method::GET,
                url: redact_url(url),
                status: response.status().as_u16(),
            });
        }
        Ok(BodyStream { response, url: redact_url(url), timeout })
    }

    /// Sends one request to `url`, shaped by `prepare`, and reads its body: refuses a
    /// link-local or metadata target unless allowed, bounds it by `timeout`, and refuses an
    /// answer that is not 2xx (a redirect included) or whose body is over `max_bytes`.
    async fn send(
        &self,
        method: Method,
        url: &str,
        timeout: Duration,
        prepare: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, OutboundError> {
        let mut response = self.respond(method.clone(), url, timeout, prepare).await?;
        self.read_success(&method, url, timeout, &mut response).await
    }

    /// Sends one request to `url`, shaped by `prepare`, and returns its answer, whatever its
    /// status: refuses a link-local or metadata target unless allowed, bounds it by `timeout`.
    async fn respond(
        &self,
        method: Method,
        url: &str,
        timeout: Duration,
        prepare: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, OutboundError> {
        let parsed = Url::parse(url).map_err(|_| OutboundError::BadUrl { url: redact_url(url) })?;
        if !self.limits.allow_link_local
            && let Some(target) = refused_target(&parsed).await
        {
            return Err(OutboundError::Refused { url: redact_url(url), target });
        }
        let request = prepare(self.client.request(method.clone(), parsed).timeout(timeout));
        request.send().await.map_err(|source| OutboundError::Request {
            method,
            url: redact_url(url),
            source: source.without_url(),
            timeout,
        })
    }

    /// The body of a 2xx answer, at most `max_bytes`; any other status is an error (a 400 or
    /// 401 naming its OAuth 2.0 error code).
    async fn read_success(
        &self,
        method: &Method,
        url: &str,
        timeout: Duration,
        response: &mut reqwest::Response,
    ) -> Result<Vec<u8>, OutboundError> {
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let error = match status {
                400 | 401 => oauth_error_code(&read_at_most(response, OAUTH_ERROR_MAX_BYTES).await),
                _ => None,
            };
            return Err(match error {
                Some(error) => OutboundError::OAuth { method: method.clone(), url: redact_url(url), status, error },
                None => OutboundError::Status { method: method.clone(), url: redact_url(url), status },
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|source| OutboundError::Request {
            method: method.clone(),
            url: redact_url(url),
            source: source.without_url(),
            timeout,
        })? {
            if body.len() + chunk.len() > self.limits.max_bytes {
                return Err(OutboundError::TooLarge {
                    method: method.clone(),
                    url: redact_url(url),
                    limit: self.limits.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The same client (one connection pool) with another body cap.
    pub fn with_max_bytes(&self, max_bytes: usize) -> Self {
        Self { client: self.client.clone(), limits: OutboundLimits { max_bytes, ..self.limits } }
    }
}

/// The answer to a conditional GET.
#[derive(Debug)]
pub enum Conditional {
    /// 304: what the caller has is current.
    NotModified,
    /// A new body, and its `ETag` when the server sent one.
    Body {
        /// The `ETag` to send as `If-None-Match` next time.
        etag: Option<String>,
        /// The body.
        body: Vec<u8>,
    },
}

/// The body of a streamed answer, read chunk by chunk.
#[derive(Debug)]
pub struct BodyStream {
    response: reqwest::Response,
    /// The URL, redacted.
    url: String,
    timeout: Duration,
}

impl BodyStream {
    /// Appends the next chunk of the body to `buffer`; `false` once the server ended it.
    pub async fn read_into(&mut self, buffer: &mut Vec<u8>) -> Result<bool, OutboundError> {
        let chunk = self.response.chunk().await.map_err(|source| OutboundError::Request {
            method: Method::GET,
            url: self.url.clone(),
            source: source.without_url(),
            timeout: self.timeout,
        })?;
        Ok(chunk.map(|chunk| buffer.extend_from_slice(&chunk)).is_some())
    }
}

/// `request` with `headers` added.
fn with_headers(request: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> reqwest::RequestBuilder {
    headers.iter().fold(request, |request, (name, value)| request.header(*name, *value))
}

/// The longest error answer read for its OAuth 2.0 error code.
const OAUTH_ERROR_MAX_BYTES: usize = 4096;

/// The first chunks of a body, up to `limit` bytes or the first failure.
async fn read_at_most(response: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit
        && let Ok(Some(chunk)) = response.chunk().await
    {
        body.extend_from_slice(&chunk);
    }
    body
}

/// The `error` code of an OAuth 2.0 error answer (RFC 6749 5.2): printable ASCII without `"`
/// or `\\`, at most 64 characters; `None` for any other body.
fn oauth_error_code(body: &[u8]) -> Option<Box<str>> {
    let document: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = document.get("error")?.as_str()?;
    let fits = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    fits.then(|| code.into())
}

/// `text` form-encoded (`application/x-www-form-urlencoded`).
fn form_encoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `url` fit for a log line, an error or a probe's answer: without userinfo (`user:password@`),
/// query or fragment, where API keys and signed-URL tokens hide. Text that is no URL is cut the
/// same way.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        _ => {
            let without_query = url.split(['?', '#']).next().unwrap_or_default();
            match without_query.split_once("://") {
                Some((scheme, rest)) => {
                    let authority_end = rest.find('/').unwrap_or(rest.len());
                    let (authority, path) = rest.split_at(authority_end);
                    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
                    format!("{scheme}://{host}{path}")
                }
                None => without_query.rsplit_once('@').map_or(without_query, |(_, rest)| rest).to_string(),
            }
        }
    }
}

/// Why a request failed, in words an operator can act on: reqwest's own message names only
/// the URL, so the causes below it are walked (refused connection, DNS, TLS) and a timeout
/// says its bound. The chain holds no header or body, so no secret.
fn describe_request_error(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    let mut causes: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.iter().any(|known| known.contains(&text)) {
            causes.push(text);
        }
        source = cause.source();
    }
    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "cannot read the answer"
    } else {
        "request failed"
    };
    if causes.is_empty() { what.to_string() } else { format!("{what}: {}", causes.join(": ")) }
}

/// One network an outbound fetch never connects to.
#[derive(Debug, Clone, Copy)]
pub struct RefusedNetwork {
    /// The network's first address.
    pub address: IpAddr,
    /// The network's prefix length.
    pub prefix_len: u8,
    /// What lives there.
    pub what: &'static str,
}

impl RefusedNetwork {
    const fn v4(octets: [u8; 4], prefix_len: u8, what: &'static str) -> Self {
        let [a, b, c, d] = octets;
        Self { address: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix_len, what }
    }

    const fn v6(segments: [u16; 8], prefix_len: u8, what: &'static str) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self { address: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix_len, what }
    }

    fn contains(&self, address: IpAddr) -> bool {
        let prefix = u32::from(self.prefix_len);
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// The link-local ranges and cloud metadata services that outbound fetches refuse, unless
/// `jwks_allow_link_local` is set: as a literal address in a URL (a `jwksUri`, a discovered
/// `jwks_uri`), and among the addresses a host name resolves to at connect time.
pub const REFUSED_NETWORKS: [RefusedNetwork; 7] = [
    RefusedNetwork::v4(
        [169, 254, 0, 0],
        16,
        "IPv4 link-local: the metadata service of AWS, Azure, Google Cloud, Oracle Cloud, OpenStack and DigitalOcean (169.254.169.254), AWS ECS task metadata (169.254.170.2)",
    ),
    RefusedNetwork::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "IPv6 link-local"),
    RefusedNetwork::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128, "AWS EC2 instance metadata over IPv6"),
    RefusedNetwork::v6([0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254], 128, "Google Compute Engine metadata over IPv6"),
    RefusedNetwork::v4([100, 100, 100, 200], 32, "Alibaba Cloud instance metadata"),
    RefusedNetwork::v4([192, 0, 0, 192], 32, "Oracle Cloud Infrastructure instance metadata (classic)"),
    RefusedNetwork::v4([168, 63, 129, 16], 32, "Azure WireServer"),
];

/// Host names of metadata services, refused whatever they resolve to.
pub const REFUSED_HOST_NAMES: [&str; 2] = ["metadata.google.internal", "metadata"];

/// The refused network `address` lies in, if any: a fetch must not connect to it. An
/// IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address counts as the IPv4
/// address it carries.
fn refused_network(address: IpAddr) -> Option<&'static RefusedNetwork> {
    let carried_v4 = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().or_else(|| {
            let [a, b, c, d, e, f, ..] = v6.segments();
            let [.., w, x, y, z] = v6.octets();
            ([a, b, c, d, e, f] == [0x64, 0xff9b, 0, 0, 0, 0]).then_some(Ipv4Addr::new(w, x, y, z))
        }),
        IpAddr::V4(_) => None,
    };
    let address = carried_v4.map_or(address, IpAddr::V4);
    REFUSED_NETWORKS.iter().find(|network| network.contains(address))
}

/// What of `url` is refused, if anything: a missing host, a metadata host name, a refused
/// literal address, or a name resolving to a refused address now.
async fn refused_target(url: &Url) -> Option<String> {
    let Some(host) = url.host_str() else { return Some("the URL names no host".to_string()) };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if REFUSED_HOST_NAMES.contains(&host.to_ascii_lowercase().trim_end_matches('.')) {
        return Some(format!("`{host}` is a metadata host name"));
    }
    if let Ok(address) = host.parse::<IpAddr>() {
        return refused_network(address).map(|network| format!("{address} is {}", describe_refused(network)));
    }
    let port = url.port_or_known_default().unwrap_or(443);
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => refuse_metadata_addresses(host, addresses).err(),
        // Unresolvable: the fetch itself will fail and say so.
        Err(_) => None,
    }
}

/// A refused network in words: `a link-local or metadata address (what lives there)`.
fn describe_refused(network: &RefusedNetwork) -> String {
    format!("a link-local or metadata address ({})", network.what)
}

/// The addresses a name resolved to, or why none may be used: one refused address refuses the
/// name.
fn refuse_metadata_addresses(
    host: &str,
    addresses: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, String> {
    let addresses: Vec<SocketAddr> = addresses.into_iter().collect();
    let refused = addresses.iter().find_map(|address| Some((address.ip(), refused_network(address.ip())?)));
    match refused {
        Some((address, network)) => Err(format!("`{host}` resolves to {address}, {}", describe_refused(network))),
        None => Ok(addresses),
    }
}

/// The resolver of the outbound client: the system's, refusing a name that resolves to a refused
/// address. The check before a fetch resolves the name once; this one judges the addresses the
/// connection uses, so a name cannot pass the check and then resolve to a metadata address.
struct MetadataRefusingResolver;

impl reqwest::dns::Resolve for MetadataRefusingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addresses = refuse_metadata_addresses(&host, resolved)?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn only_a_short_printable_error_code_is_read_from_an_oauth_error_answer() {
        let code = |body: &str| oauth_error_code(body.as_bytes()).map(|code| code.to_string());
        assert_eq!(
            code(r#"{"error":"invalid_grant","error_description":"grant not found"}"#).as_deref(),
            Some("invalid_grant")
        );
        for other in ["", "not json", r#"{"error":7}"#, r#"{"error":""}"#, r#"{"error":"a\nb"}"#, r#"{"message":"x"}"#]
        {
            assert_eq!(code(other), None, "{other}");
        }
        assert_eq!(code(&format!(r#"{{"error":"{}"}}"#, "x".repeat(65))), None, "too long");
    }

    /// What the fake server answers on a path: status, body, and a delay before answering.
    pub(crate) type Route = fn(&str) -> (u16, String, Duration);

    /// A tiny HTTP/1.1 server on loopback that answers by path and counts requests.
    pub(crate) async fn serve(
        route: impl Fn(&str) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let route = Arc::new(route);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let route = route.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 4096];
                    let read = stream.read(&mut buffer).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buffer[..read]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, body, delay) = route(&path);
                    tokio::time::sleep(delay).await;
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        (base, hits)
    }

    const BODY: &str = r#"{"answer": 42}"#;

    fn ok(_path: &str) -> (u16, String, Duration) {
        (200, BODY.to_string(), Duration::ZERO)
    }

    /// A client with a 500 ms timeout and a 64 KiB cap.
    fn client(allow_link_local: bool) -> Outbound {
        let limits = OutboundLimits { timeout: Duration::from_millis(500), max_bytes: 64 * 1024, allow_link_local };
        Outbound::new(limits).expect("client")
    }

    /// `ok: ` and the answer, or the error's text.
    fn answer_or_error(result: Result<String, OutboundError>) -> String {
        result.map_or_else(|error| error.to_string(), |text| format!("ok: {text}"))
    }

    /// The text a GET of `url` gives, or its error.
    async fn get(url: &str, allow_link_local: bool) -> String {
        let outbound = client(allow_link_local);
        answer_or_error(outbound.get_text(url, outbound.limits().timeout).await)
    }

    /// The JSON a form POST to `url` with client credentials gives, or its error.
    async fn post(url: &str) -> String {
        let outbound = client(false);
        let form = [("grant_type", "authorization_code"), ("code", "s3cret-code")];
        let credentials = Some(("client", "s3cret-password"));
        let answer = outbound.post_form_json(url, &form, credentials, outbound.limits().timeout).await;
        answer_or_error(answer.map(|document| document.to_string()))
    }

    /// What a GET from the test server answering with `route` gives.
    async fn get_from(route: Route) -> String {
        let (base, _) = serve(route).await;
        get(&format!("{base}/document"), false).await
    }

    #[tokio::test]
    async fn bad_answers_are_refused_with_a_reason() {
        let cases: Vec<(&str, Route, &str)> = vec![
            ("a 500", |_| (500, "oops".into(), Duration::ZERO), "status 500"),
            ("a redirect, never followed", |_| (302, String::new(), Duration::ZERO), "status 302"),
            ("a body over the limit", |_| (200, " ".repeat(100 * 1024), Duration::ZERO), "body over 65536 bytes"),
            (
                "an answer slower than the timeout",
                |_| (200, BODY.into(), Duration::from_secs(3)),
                "timed out after 500 ms",
            ),
        ];
        for (name, route, expected) in cases {
            // A hang guard only: the fetch's own 500 ms timeout ends the slow answer.
            let got = tokio::time::timeout(Duration::from_secs(30), get_from(route)).await;
            let got = got.unwrap_or_else(|_| format!("no answer within 30 s ({name})"));
            assert!(got.contains(expected), "{name}: expected `{expected}` in `{got}`");
        }
        assert_eq!(get_from(ok).await, format!("ok: {BODY}"));
    }

    #[tokio::test]
    async fn a_json_document_is_parsed_and_anything_else_is_refused_as_not_json() {
        let (base, _) = serve(|path| match path {
            "/json" => ok(path),
            _ => (200, "<html>login</html>".into(), Duration::ZERO),
        })
        .await;
        let limits = OutboundLimits { timeout: Duration::from_secs(5), max_bytes: 1024, allow_link_local: false };
        let outbound = Outbound::new(limits).expect("client");
        let document = outbound.get_json(&format!("{base}/json"), limits.timeout).await.expect("JSON");
        assert_eq!(document["answer"], 42);
        let html = outbound.get_json(&format!("{base}/html"), limits.timeout).await.map_err(|error| error.to_string());
        assert!(html.as_ref().is_err_and(|error| error.contains("not JSON")), "{html:?}");
    }

    #[tokio::test]
    async fn a_failed_request_says_its_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_address = closed.local_addr().expect("address");
        drop(closed);
        let (plain, _) = serve(ok).await;
        let cases = [
            (
                "a closed port",
                format!("http://{closed_address}/certs"),
                "cannot connect: client error (Connect): tcp connect error: Connection refused",
            ),
            (
                "a name that does not resolve",
                "http://idp.invalid/certs".to_string(),
                "cannot connect: client error (Connect): dns error",
            ),
            // rustls, meeting an answer that is no TLS record.
            (
                "TLS to a plain HTTP server",
                format!("{}/certs", plain.replace("http:", "https:")),
                "received corrupt message",
            ),
        ];
        for (name, uri, expected) in cases {
            let got = get(&uri, false).await;
            assert!(got.contains(expected), "{name}: expected `{expected}` in `{got}`");
        }
    }

    #[tokio::test]
    async fn no_error_carries_the_userinfo_or_query_of_its_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_address = closed.local_addr().expect("address");
        drop(closed);
        let (status_500, _) = serve(|_| (500, String::new(), Duration::ZERO)).await;
        let with_secrets = |base: &str| {
            base.replace("http://", "http://client:s3cret-password@") + "/certs?api_key=s3cret-key#s3cret-fragment"
        };
        for url in [
            with_secrets(&format!("http://{closed_address}")),
            with_secrets(&status_500),
            with_secrets("http://169.254.169.254"),
            with_secrets("http://idp.invalid"),
            "http://client:s3cret-password@[not a url/certs?api_key=s3cret-key".to_string(),
        ] {
            let got = get(&url, false).await;
            assert!(!got.contains("s3cret"), "{url}: {got}");
            assert!(!got.starts_with("ok"), "{url}: {got}");
        }
        assert_eq!(redact_url("https://user:pw@idp.example:8443/keys?k=v#f"), "https://idp.example:8443/keys");
        assert_eq!(redact_url("https://user:pw@[bad/keys?k=v"), "https://[bad/keys");
        assert_eq!(redact_url("https://idp.example/keys"), "https://idp.example/keys");
    }

    /// An address of each refused network, and IPv6 forms carrying IPv4 ones.
    const REFUSED_SAMPLES: [&str; 11] = [
        "169.254.169.254",
        "169.254.170.2",
        "fe80::1",
        "fd00:ec2::254",
        "fd20:ce::254",
        "100.100.100.200",
        "192.0.0.192",
        "168.63.129.16",
        "::ffff:169.254.169.254",
        "::ffff:100.100.100.200",
        "64:ff9b::a9fe:a9fe",
    ];

    #[tokio::test]
    async fn every_metadata_address_is_refused_as_a_literal_and_as_a_resolved_address() {
        let samples: Vec<IpAddr> = REFUSED_SAMPLES.iter().map(|text| text.parse().expect("an address")).collect();
        for network in REFUSED_NETWORKS {
            assert!(samples.iter().any(|&sample| network.contains(sample)), "no sample for {}", network.what);
        }
        let public: SocketAddr = "203.0.113.7:443".parse().expect("an address");
        for (text, address) in REFUSED_SAMPLES.iter().zip(samples) {
            let literal =
                if address.is_ipv6() { format!("http://[{text}]/keys") } else { format!("http://{text}/keys") };
            let got = get(&literal, false).await;
            assert!(got.contains("link-local or metadata"), "{literal}: {got}");
            let resolved = refuse_metadata_addresses("idp.example", [public, SocketAddr::new(address, 443)]);
            assert!(resolved.is_err(), "{text} among a name's addresses");
            // The fetch client's own resolver, given the address as the name to resolve.
            let name: reqwest::dns::Name = text.parse().expect("a name");
            let answer = reqwest::dns::Resolve::resolve(&MetadataRefusingResolver, name).await;
            assert!(answer.is_err(), "{text}: the client's resolver refuses it");
        }
        for neighbour in
            ["100.100.100.201", "192.0.0.193", "168.63.129.17", "fd00:ec2::253", "169.255.0.1", "127.0.0.1"]
        {
            assert!(refused_network(neighbour.parse().expect("an address")).is_none(), "{neighbour}");
        }
        assert!(refuse_metadata_addresses("idp.example", [public]).is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_fetched_through_the_refusing_resolver() {
        let (base, _) = serve(ok).await;
        let by_name = base.replace("127.0.0.1", "localhost");
        assert_eq!(get(&format!("{by_name}/certs"), false).await, format!("ok: {BODY}"));
    }

    #[tokio::test]
    async fn a_form_post_is_bounded_and_refused_as_a_get_is_and_its_errors_say_post() {
        let (base, _) = serve(|path| match path {
            "/token" => ok(path),
            "/large" => (200, " ".repeat(100 * 1024), Duration::ZERO),
            _ => (500, String::new(), Duration::ZERO),
        })
        .await;
        assert_eq!(post(&format!("{base}/token")).await, r#"ok: {"answer":42}"#);
        let cases = [
            (format!("{base}/failing"), format!("POST `{base}/failing`: status 500")),
            (format!("{base}/large"), format!("POST `{base}/large`: body over 65536 bytes")),
            ("http://169.254.169.254/token".to_string(), "`http://169.254.169.254/token` refused: ".to_string()),
        ];
        for (url, expected) in cases {
            let got = post(&url).await;
            assert!(got.starts_with(&expected), "{url}: expected `{expected}` in `{got}`");
            assert!(!got.contains("s3cret"), "{url}: {got}");
        }
    }

    #[tokio::test]
    async fn a_refusal_says_what_it_refuses_and_names_no_setting_of_one_caller() {
        let cases = [
            ("http://169.254.169.254/keys", "169.254.169.254 is a link-local or metadata address (IPv4 link-local"),
            ("http://[fd00:ec2::254]/keys", "fd00:ec2::254 is a link-local or metadata address (AWS EC2"),
            ("http://Metadata.Google.Internal./x", "`metadata.google.internal.` is a metadata host name"),
        ];
        for (url, expected) in cases {
            let got = get(url, false).await;
            assert!(got.contains(expected), "{url}: expected `{expected}` in `{got}`");
            assert!(got.ends_with("; link-local and metadata targets are not allowed"), "{url}: {got}");
            assert!(!got.contains("jwks"), "{url}: {got}");
        }
        let resolved = SocketAddr::new("169.254.170.2".parse().expect("an address"), 443);
        let refusal = refuse_metadata_addresses("idp.example", [resolved]).err().unwrap_or_default();
        assert!(
            refusal.starts_with("`idp.example` resolves to 169.254.170.2, a link-local or metadata address (IPv4"),
            "{refusal}"
        );
    }

    #[tokio::test]
    async fn link_local_and_metadata_targets_are_refused_unless_allowed() {
        for uri in
            ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/keys", "http://metadata.google.internal/x"]
        {
            let got = get(uri, false).await;
            assert!(got.ends_with("link-local and metadata targets are not allowed"), "{uri}: {got}");
        }
        let allowed = get("http://169.254.169.254:1/keys", true).await;
        assert!(!allowed.contains("link-local"), "allowed by config: {allowed}");
    }
}
