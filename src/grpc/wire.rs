//! A zero-copy view of Envoy's `CheckRequest`: prost-derived mirrors of the fields the core reads, whose strings are slices of the received buffer, and the view → core `Request` conversion.

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use prost::Message;
use prost::bytes::Bytes;

use super::with_pseudo_header_fallbacks;
use crate::core::{HttpRequest as CoreHttpRequest, Peer as CorePeer, Request, StrMap};

/// `envoy.service.auth.v3.CheckRequest`, as far as the core reads it.
///
/// The mirrors keep the tags and wire types of Envoy's protos (`attribute_context.proto`,
/// `config/core/v3/address.proto` and `base.proto`), so prost applies protobuf's rules as it
/// does for Envoy's own types: unknown fields are skipped, the last value of a scalar wins,
/// repeated occurrences of a message merge, the last member of a oneof wins. Every `string` is
/// declared `bytes` (the same wire type), so prost slices it out of the buffer rather than
/// copying and validating it; [`CheckView::request`] validates UTF-8 of what the core reads. A
/// `map<string, string>` is read as the repeated entry messages it is on the wire, and handed
/// to the core last entry first, so that a repeated key keeps its last value.
#[derive(Clone, PartialEq, Message)]
pub struct CheckView {
    #[prost(message, optional, tag = "1")]
    attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, Message)]
struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    source: Option<Peer>,
    #[prost(message, optional, tag = "2")]
    destination: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    request: Option<AttributeRequest>,
    #[prost(message, repeated, tag = "10")]
    context_extensions: Vec<MapEntry>,
    #[prost(message, optional, tag = "12")]
    tls_session: Option<TlsSession>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, Message)]
struct Peer {
    #[prost(message, optional, tag = "1")]
    address: Option<Address>,
    #[prost(message, repeated, tag = "3")]
    labels: Vec<MapEntry>,
    #[prost(bytes = "bytes", tag = "4")]
    principal: Bytes,
}

/// `envoy.config.core.v3.Address`: a oneof, mirrored whole so that a later pipe or internal
/// address replaces a socket address, as it does in Envoy's type.
#[derive(Clone, PartialEq, Message)]
struct Address {
    #[prost(oneof = "AddressKind", tags = "1, 2, 3")]
    address: Option<AddressKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum AddressKind {
    #[prost(message, tag = "1")]
    SocketAddress(SocketAddress),
    /// `Pipe`: no IP address.
    #[prost(message, tag = "2")]
    Pipe(Skipped),
    /// `EnvoyInternalAddress`: no IP address.
    #[prost(message, tag = "3")]
    EnvoyInternalAddress(Skipped),
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, Message)]
struct SocketAddress {
    #[prost(bytes = "bytes", tag = "2")]
    address: Bytes,
    #[prost(oneof = "PortSpecifier", tags = "3, 4")]
    port_specifier: Option<PortSpecifier>,
}

/// `SocketAddress.port_specifier`: a later named port replaces a port number.
#[derive(Clone, PartialEq, prost::Oneof)]
enum PortSpecifier {
    #[prost(uint32, tag = "3")]
    PortValue(u32),
    #[prost(bytes = "bytes", tag = "4")]
    NamedPort(Bytes),
}

/// A message whose fields the core does not read: all of them are skipped.
#[derive(Clone, PartialEq, Message)]
struct Skipped {}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
struct AttributeRequest {
    #[prost(message, optional, tag = "2")]
    http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, Message)]
struct HttpRequest {
    #[prost(bytes = "bytes", tag = "2")]
    method: Bytes,
    #[prost(message, repeated, tag = "3")]
    headers: Vec<MapEntry>,
    #[prost(bytes = "bytes", tag = "4")]
    path: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    host: Bytes,
    #[prost(bytes = "bytes", tag = "6")]
    scheme: Bytes,
    #[prost(message, optional, tag = "13")]
    header_map: Option<HeaderMap>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, Message)]
struct HeaderMap {
    #[prost(message, repeated, tag = "1")]
    headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
struct HeaderValue {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    raw_value: Bytes,
}

/// `AttributeContext.TLSSession`.
#[derive(Clone, PartialEq, Message)]
struct TlsSession {
    #[prost(bytes = "bytes", tag = "1")]
    sni: Bytes,
}

/// One entry of a `map<string, string>`: on the wire, a message with the key as field 1 and
/// the value as field 2.
#[derive(Clone, PartialEq, Message)]
struct MapEntry {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// Why a decoded view is not a request the core can judge; either way it is denied as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("the check request has no attributes")]
    NoAttributes,
    /// Envoy's proto declares the field a `string`; prost rejects the whole message for it.
    #[error("check request field `{0}` is not UTF-8")]
    NotUtf8(&'static str),
}

impl CheckView {
    /// Decodes a Check's protobuf bytes. The view's strings are slices of `bytes`: no copy.
    pub fn from_wire(bytes: Bytes) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }

    /// The view of a prost `CheckRequest`, through its encoding (tests, benches and the
    /// fuzzer; not the serving path).
    pub fn from_check(check: &CheckRequest) -> Result<Self, prost::DecodeError> {
        Self::from_wire(Bytes::from(check.encode_to_vec()))
    }

    /// Borrows the attributes the core reads. Envoy puts pseudo-headers in the header map and
    /// the query inside `path`; with `encode_raw_headers` the headers come in `header_map`.
    pub fn request(&self) -> Result<Request<'_>, ViewError> {
        let AttributeContext { source, destination, request, context_extensions, tls_session } =
            self.attributes.as_ref().ok_or(ViewError::NoAttributes)?;
        Ok(Request {
            source: peer(source.as_ref())?,
            destination: peer(destination.as_ref())?,
            http: request.as_ref().and_then(|request| request.http.as_ref()).map(http_request).transpose()?,
            sni: tls_session.as_ref().map_or(Ok(""), |tls| text(&tls.sni, "TLSSession.sni"))?,
            context_extensions: StrMap::from_entries(entries(
                context_extensions,
                "AttributeContext.context_extensions",
            )?),
        })
    }
}

fn text<'a>(bytes: &'a Bytes, field: &'static str) -> Result<&'a str, ViewError> {
    std::str::from_utf8(bytes).map_err(|_| ViewError::NotUtf8(field))
}

/// A map's entries, the last sent first: the core reads a repeated name's first entry, and in
/// protobuf a map's repeated key has its last value.
fn entries<'a>(entries: &'a [MapEntry], field: &'static str) -> Result<Vec<(&'a str, &'a str)>, ViewError> {
    let mut pairs = Vec::with_capacity(entries.len());
    for entry in entries.iter().rev() {
        pairs.push((text(&entry.key, field)?, text(&entry.value, field)?));
    }
    Ok(pairs)
}

fn peer(peer: Option<&Peer>) -> Result<CorePeer<'_>, ViewError> {
    let Some(Peer { address, labels, principal }) = peer else {
        return Ok(CorePeer::default());
    };
    let socket = address.as_ref().and_then(|address| match &address.address {
        Some(AddressKind::SocketAddress(socket)) => Some(socket),
        _ => None,
    });
    let port = socket.and_then(|socket| match socket.port_specifier {
        Some(PortSpecifier::PortValue(port)) => u16::try_from(port).ok(),
        _ => None,
    });
    let address = socket.map(|socket| text(&socket.address, "SocketAddress.address")).transpose()?;
    Ok(CorePeer {
        address: address.and_then(|address| address.parse().ok()),
        port,
        principal: text(principal, "Peer.principal")?,
        labels: StrMap::from_entries(entries(labels, "Peer.labels")?),
    })
}

fn http_request(http: &HttpRequest) -> Result<CoreHttpRequest<'_>, ViewError> {
    let HttpRequest { method, headers, path, host, scheme, header_map } = http;
    let mut header_list = entries(headers, "HttpRequest.headers")?;
    if header_list.is_empty()
        && let Some(map) = header_map
    {
        for header in &map.headers {
            let name = text(&header.key, "HeaderValue.key")?;
            // A raw value that is not UTF-8 cannot match any pattern; it is left out.
            let value = if header.raw_value.is_empty() {
                Some(text(&header.value, "HeaderValue.value")?)
            } else {
                std::str::from_utf8(&header.raw_value).ok()
            };
            header_list.extend(value.map(|value| (name, value)));
        }
    }
    Ok(with_pseudo_header_fallbacks(CoreHttpRequest {
        method: text(method, "HttpRequest.method")?,
        scheme: text(scheme, "HttpRequest.scheme")?,
        host: text(host, "HttpRequest.host")?,
        path: text(path, "HttpRequest.path")?,
        headers: header_list,
    }))
}
