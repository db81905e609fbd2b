//! The request the core judges: plain attributes borrowed from whichever door it came through; pure.

use std::collections::HashMap;
use std::net::IpAddr;

/// One request to authorize. Every string is borrowed from the transport's own message.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The direct peer that connected to the proxy.
    pub source: Peer<'a>,
    /// The workload the request is for.
    pub destination: Peer<'a>,
    /// HTTP attributes; `None` for a TCP connection check.
    pub http: Option<HttpRequest<'a>>,
    /// TLS server name requested by the client, empty when none.
    pub sni: &'a str,
    /// Envoy per-route `context_extensions` (Emissary `auth_context_extensions`).
    pub context_extensions: Option<&'a HashMap<String, String>>,
}

/// One side of the connection.
#[derive(Debug, Clone, Default)]
pub struct Peer<'a> {
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    /// The peer's certificate identity as sent (`spiffe://…`), empty when none.
    pub principal: &'a str,
    /// The peer's workload labels, as Envoy reports them for the destination.
    pub labels: Option<&'a HashMap<String, String>>,
}

/// The HTTP part of a request.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// `http` or `https`, empty when unknown.
    pub scheme: &'a str,
    /// The authority as sent, port included.
    pub host: &'a str,
    /// The request target as sent: path, query and all.
    pub path: &'a str,
    /// Header names in lower case, as HTTP/2 and Envoy carry them.
    pub headers: Vec<(&'a str, &'a str)>,
}

impl<'a> HttpRequest<'a> {
    /// The value of a header, by its lower-case name.
    pub fn header(&self, lower_case_name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(name, _)| *name == lower_case_name).map(|&(_, value)| value)
    }
}

/// A SPIFFE identity split into the parts policies read: `spiffe://` dropped, namespace and
/// service account found by their `/ns/` and `/sa/` markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    /// The identity without `spiffe://`, as `principals` match it.
    pub principal: &'a str,
    pub namespace: Option<&'a str>,
    pub service_account: Option<&'a str>,
}

impl<'a> SpiffeId<'a> {
    /// Reads a peer principal; `None` when there is none.
    pub fn parse(principal: &'a str) -> Option<Self> {
        if principal.is_empty() {
            return None;
        }
        let principal = principal.strip_prefix("spiffe://").unwrap_or(principal);
        let (namespace, after_namespace) = segment_after(principal, "/ns/");
        // The service account follows the namespace: `…/ns/sa/sa/x` is namespace `sa`, account `x`.
        let (service_account, _) = segment_after(after_namespace, "/sa/");
        Some(Self { principal, namespace, service_account })
    }
}

/// The non-empty segment after `marker`, and the text after that segment.
fn segment_after<'a>(text: &'a str, marker: &str) -> (Option<&'a str>, &'a str) {
    let Some(at) = text.find(marker) else {
        return (None, text);
    };
    let rest = &text[at + marker.len()..];
    let segment = rest.split('/').next().unwrap_or(rest);
    ((!segment.is_empty()).then_some(segment), &rest[segment.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_split_into_namespace_and_service_account() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/jobs/sa/job-service").expect("id");
        assert_eq!(id.principal, "cluster.local/ns/jobs/sa/job-service");
        assert_eq!(id.namespace, Some("jobs"));
        assert_eq!(id.service_account, Some("job-service"));
        let bare = SpiffeId::parse("cluster.local/ns/a/sa/b").expect("id");
        assert_eq!(bare.principal, "cluster.local/ns/a/sa/b");
        let same_names = SpiffeId::parse("spiffe://td/ns/sa/sa/x").expect("id");
        assert_eq!((same_names.namespace, same_names.service_account), (Some("sa"), Some("x")));
        let odd = SpiffeId::parse("spiffe://td/workload").expect("id");
        assert_eq!((odd.namespace, odd.service_account), (None, None));
        assert_eq!(SpiffeId::parse(""), None);
    }

    #[test]
    fn header_lookup_uses_lower_case_names() {
        let http = HttpRequest { headers: vec![("x-user", "ann"), (":path", "/")], ..HttpRequest::default() };
        assert_eq!(http.header("x-user"), Some("ann"));
        assert_eq!(http.header("x-other"), None);
    }
}
