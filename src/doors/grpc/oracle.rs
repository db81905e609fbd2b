//! The test oracle for the view: the prost-typed `CheckRequest` → `Request` conversion, destructuring every field of Envoy's types so that a new upstream field is a compile error; never on the serving path.

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{self, Peer as ProtoPeer};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use super::with_pseudo_header_fallbacks;
use crate::core::{HttpRequest, Peer, Request, StrMap};

/// Borrows the attributes of a prost `CheckRequest`; `None` when it has none.
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
    let joined_headers = !header_list.is_empty();
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
    with_pseudo_header_fallbacks(HttpRequest { method, scheme, host, path, headers: header_list, joined_headers })
}

/// Where a request read through the view differs from the oracle's; `Ok` when they agree.
/// Headers compare as the core reads them: by name, every value of a repeated one.
pub fn compare(view: &Request<'_>, oracle: &Request<'_>) -> Result<(), String> {
    let differs = |field: &str, view: &dyn std::fmt::Debug, oracle: &dyn std::fmt::Debug| {
        Err(format!("`{field}` differs: view {view:?}, oracle {oracle:?}"))
    };
    if view.source != oracle.source {
        return differs("source", &view.source, &oracle.source);
    }
    if view.destination != oracle.destination {
        return differs("destination", &view.destination, &oracle.destination);
    }
    if view.sni != oracle.sni {
        return differs("sni", &view.sni, &oracle.sni);
    }
    if view.context_extensions != oracle.context_extensions {
        return differs("context_extensions", &view.context_extensions, &oracle.context_extensions);
    }
    match (&view.http, &oracle.http) {
        (None, None) => Ok(()),
        (Some(view), Some(oracle)) => compare_http(view, oracle),
        (view, oracle) => differs("http", view, oracle),
    }
}

fn compare_http(view: &HttpRequest<'_>, oracle: &HttpRequest<'_>) -> Result<(), String> {
    fn fields<'a>(http: &HttpRequest<'a>) -> [&'a str; 4] {
        [http.method, http.scheme, http.host, http.path]
    }
    if fields(view) != fields(oracle) || view.joined_headers != oracle.joined_headers {
        return Err(format!("method, scheme, host, path or joined headers differ: view {view:?}, oracle {oracle:?}"));
    }
    let mut names = view.headers.iter().chain(&oracle.headers).map(|&(name, _)| name);
    match names.find(|name| !view.header_values(name).eq(oracle.header_values(name))) {
        Some(name) => Err(format!("header `{name}` differs: view {:?}, oracle {:?}", view.headers, oracle.headers)),
        None => Ok(()),
    }
}
