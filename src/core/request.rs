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
    pub context_extensions: StrMap<'a>,
}

/// One side of the connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peer<'a> {
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    /// The peer's certificate identity as sent (`spiffe://…`), empty when none.
    pub principal: &'a str,
    /// The peer's workload labels, as Envoy reports them for the destination.
    pub labels: StrMap<'a>,
}

/// Names and values a request carries, such as context extensions or a peer's labels, borrowed
/// from the transport: a list of entries, or a map.
#[derive(Debug, Clone)]
pub struct StrMap<'a>(Entries<'a>);

#[derive(Debug, Clone)]
enum Entries<'a> {
    List(Vec<(&'a str, &'a str)>),
    Map(&'a HashMap<String, String>),
}

impl<'a> StrMap<'a> {
    /// A list of entries. A name that repeats has its first entry's value, as
    /// [`HttpRequest::header`] reads headers.
    pub fn from_entries(entries: Vec<(&'a str, &'a str)>) -> Self {
        Self(Entries::List(entries))
    }

    /// The value for `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        match &self.0 {
            Entries::List(list) => list.iter().find(|&&(key, _)| key == name).map(|&(_, value)| value),
            Entries::Map(map) => map.get(name).map(String::as_str),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Entries::List(list) => list.is_empty(),
            Entries::Map(map) => map.is_empty(),
        }
    }

    /// Every name, repeated ones as often as they repeat.
    fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        let (list, map) = match &self.0 {
            Entries::List(list) => (list.as_slice(), None),
            Entries::Map(map) => (&[][..], Some(*map)),
        };
        list.iter().map(|&(name, _)| name).chain(map.into_iter().flat_map(|map| map.keys().map(String::as_str)))
    }
}

impl Default for StrMap<'_> {
    fn default() -> Self {
        Self(Entries::List(Vec::new()))
    }
}

impl<'a> From<&'a HashMap<String, String>> for StrMap<'a> {
    fn from(map: &'a HashMap<String, String>) -> Self {
        Self(Entries::Map(map))
    }
}

/// The same value for every name either has, whatever holds the entries.
impl PartialEq for StrMap<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.names().chain(other.names()).all(|name| self.get(name) == other.get(name))
    }
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
    /// Header names in lower case, as HTTP/2 and Envoy carry them. A name may repeat; the
    /// first entry is the one read.
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
    fn a_repeated_name_has_its_first_entrys_value() {
        let map = StrMap::from_entries(vec![("app", "c"), ("tier", "api"), ("app", "b"), ("zone", "z"), ("app", "a")]);
        assert_eq!(
            (map.get("app"), map.get("tier"), map.get("zone"), map.get("x")),
            (Some("c"), Some("api"), Some("z"), None)
        );
    }

    #[test]
    fn maps_are_equal_whatever_holds_their_entries() {
        let owned = HashMap::from([("app".to_string(), "web".to_string()), ("tier".to_string(), "api".to_string())]);
        let listed = StrMap::from_entries(vec![("tier", "api"), ("app", "web"), ("app", "old")]);
        assert_eq!(StrMap::from(&owned), listed);
        assert_eq!(listed, StrMap::from(&owned));
        assert_ne!(StrMap::from(&owned), StrMap::from_entries(vec![("app", "web")]));
        assert_ne!(StrMap::from_entries(vec![("app", "web")]), StrMap::from(&owned));
        assert_ne!(StrMap::from(&owned), StrMap::from_entries(vec![("app", "web"), ("tier", "db")]));
        assert!(StrMap::default().is_empty() && StrMap::from(&HashMap::new()).is_empty());
        assert_eq!(StrMap::default(), StrMap::from(&HashMap::new()));
    }

    #[test]
    fn header_lookup_uses_lower_case_names() {
        let http = HttpRequest { headers: vec![("x-user", "ann"), (":path", "/")], ..HttpRequest::default() };
        assert_eq!(http.header("x-user"), Some("ann"));
        assert_eq!(http.header("x-other"), None);
    }
}
