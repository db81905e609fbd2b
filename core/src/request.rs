//! The request the core judges: plain attributes borrowed from whichever door it came through; pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

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
    /// The peer's IP address, when known.
    pub address: Option<IpAddr>,
    /// The peer's port, when known.
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

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Entries::List(list) => list.is_empty(),
            Entries::Map(map) => map.is_empty(),
        }
    }

    /// Every name, repeated ones as often as they repeat.
    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
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
    /// The HTTP method, as sent.
    pub method: &'a str,
    /// `http` or `https`, empty when unknown.
    pub scheme: &'a str,
    /// The authority as sent, port included.
    pub host: &'a str,
    /// The request target as sent: path, query and all.
    pub path: &'a str,
    /// Header names in lower case, as HTTP/2 and Envoy carry them. A name repeats once per
    /// value sent, unless `joined_headers`.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The values of a header sent several times came joined with `,` into one entry (Envoy's
    /// `headers` map, without `encode_raw_headers`): whether `a,b` is one value or two cannot
    /// be told, and a repeated name's first entry is the only one read.
    pub joined_headers: bool,
}

impl<'a> HttpRequest<'a> {
    /// The first value of a header, by its lower-case name: for headers sent once (pseudo-headers,
    /// request ids, trace context).
    pub fn header(&self, lower_case_name: &str) -> Option<&'a str> {
        self.header_values(lower_case_name).next()
    }

    /// Every value of a header, by its lower-case name, in the order sent; with
    /// `joined_headers`, the one joined value.
    pub fn header_values<'s>(&'s self, lower_case_name: &'s str) -> impl DoubleEndedIterator<Item = &'a str> + 's {
        let is_named = move |&&(name, _): &&(&str, &str)| name == lower_case_name;
        let end = if self.joined_headers {
            self.headers.iter().position(|entry| is_named(&entry)).map_or(0, |first| first + 1)
        } else {
            self.headers.len()
        };
        self.headers.iter().take(end).filter(is_named).map(|&(_, value)| value)
    }
}

/// How the values of a header that came joined are read: as sent, or split at commas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderReading {
    /// Each value as it came.
    Whole,
    /// Each value's comma-separated parts, trimmed, as values of their own.
    Parts,
}

/// The request's headers as the service will receive them: the headers authentication sets
/// replace the client's copies, and the ones it strips are gone. Borrowed, never copied.
#[derive(Debug, Clone, Copy)]
pub struct HeaderView<'r> {
    http: &'r HttpRequest<'r>,
    set: &'r [(Arc<str>, String)],
    removed: &'r [Arc<str>],
}

impl<'r> HeaderView<'r> {
    /// The headers as the client sent them.
    pub fn as_sent(http: &'r HttpRequest<'r>) -> Self {
        Self { http, set: &[], removed: &[] }
    }

    /// The headers once `set` replaced (or added) theirs and `removed` are stripped.
    pub fn after(http: &'r HttpRequest<'r>, set: &'r [(Arc<str>, String)], removed: &'r [Arc<str>]) -> Self {
        Self { http, set, removed }
    }

    /// Whether some value of the header satisfies `matches`, the values read as `reading` says.
    /// A value set by authentication is read whole: it is one value.
    pub fn any_value(&self, lower_case_name: &str, reading: HeaderReading, matches: impl Fn(&str) -> bool) -> bool {
        if let Some((_, value)) = self.set.iter().find(|(name, _)| name.eq_ignore_ascii_case(lower_case_name)) {
            return matches(value);
        }
        if self.removed.iter().any(|name| name.eq_ignore_ascii_case(lower_case_name)) {
            return false;
        }
        let mut values = self.http.header_values(lower_case_name);
        match reading {
            HeaderReading::Whole => values.any(matches),
            HeaderReading::Parts => values.flat_map(|value| value.split(',')).any(|part| matches(part.trim())),
        }
    }

    /// Calls `visit` with every value of the header, each whole, as the service will receive
    /// them; borrowed, never copied.
    pub fn each_value(&self, lower_case_name: &str, mut visit: impl FnMut(&'r str)) {
        let set: &'r [(Arc<str>, String)] = self.set;
        if let Some((_, value)) = set.iter().find(|(name, _)| name.eq_ignore_ascii_case(lower_case_name)) {
            return visit(value);
        }
        if self.removed.iter().any(|name| name.eq_ignore_ascii_case(lower_case_name)) {
            return;
        }
        self.http.header_values(lower_case_name).for_each(visit);
    }

    /// Whether the header's value reads differently split at commas: it came joined, from the
    /// client, with a comma in it.
    pub fn is_ambiguous(&self, lower_case_name: &str) -> bool {
        self.http.joined_headers
            && !self.set.iter().any(|(name, _)| name.eq_ignore_ascii_case(lower_case_name))
            && !self.removed.iter().any(|name| name.eq_ignore_ascii_case(lower_case_name))
            && self.http.header_values(lower_case_name).any(|value| value.contains(','))
    }
}

/// A SPIFFE identity split into the parts policies read: `spiffe://` dropped, namespace and
/// service account found by their `/ns/` and `/sa/` markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    /// The identity without `spiffe://`, as `principals` match it.
    pub principal: &'a str,
    /// What follows `/ns/`.
    pub namespace: Option<&'a str>,
    /// What follows `/sa/`.
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

    #[test]
    fn a_repeated_header_has_every_value_unless_its_values_came_joined() {
        let mut http = HttpRequest { headers: vec![("x-t", "a"), ("y", "b"), ("x-t", "c")], ..HttpRequest::default() };
        assert_eq!(http.header_values("x-t").collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(http.header("x-t"), Some("a"));
        http.joined_headers = true;
        assert_eq!(http.header_values("x-t").collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn the_header_view_replaces_set_headers_and_hides_removed_ones() {
        let http = HttpRequest {
            headers: vec![("x-sub", "forged"), ("authorization", "Bearer t"), ("x-other", "kept")],
            ..HttpRequest::default()
        };
        let set = [(Arc::from("X-Sub"), "alice".to_string())];
        let removed = [Arc::from("authorization")];
        let view = HeaderView::after(&http, &set, &removed);
        let is = |name: &str, wanted: &str| view.any_value(name, HeaderReading::Whole, |value| value == wanted);
        assert!(is("x-sub", "alice") && !is("x-sub", "forged"));
        assert!(!view.any_value("authorization", HeaderReading::Whole, |_| true));
        assert!(is("x-other", "kept"));
        assert!(HeaderView::as_sent(&http).any_value("x-sub", HeaderReading::Whole, |value| value == "forged"));
    }

    #[test]
    fn a_joined_value_with_a_comma_is_ambiguous_and_splits_into_trimmed_parts() {
        let http = HttpRequest {
            headers: vec![("x-t", "other, acme"), ("x-one", "acme"), ("x-set", "a,b")],
            joined_headers: true,
            ..HttpRequest::default()
        };
        let set = [(Arc::from("x-set"), "c,d".to_string())];
        let view = HeaderView::after(&http, &set, &[]);
        let acme = |value: &str| value == "acme";
        assert!(!view.any_value("x-t", HeaderReading::Whole, acme));
        assert!(view.any_value("x-t", HeaderReading::Parts, acme));
        assert!(view.is_ambiguous("x-t"));
        assert!(!view.is_ambiguous("x-one") && !view.is_ambiguous("x-set") && !view.is_ambiguous("x-none"));
        let individual = HttpRequest { joined_headers: false, ..http.clone() };
        assert!(!HeaderView::as_sent(&individual).is_ambiguous("x-t"));
    }
}
