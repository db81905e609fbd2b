//! Which workload a request is for — its namespace and labels — from context extensions, peer data and the workloads table; pure.

use std::collections::HashMap;

use super::matcher::IpMatch;
use super::request::{Request, SpiffeId, StrMap};

/// The context extension that names the workload's namespace.
pub const NAMESPACE_EXTENSION: &str = "namespace";

/// What a request gets when no source names its workload's namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownWorkload {
    /// Denied (`unknown_workload`) when the set has namespace-scoped policies, which such a
    /// request would silently escape; judged by the mesh-wide policies when it has none.
    #[default]
    Deny,
    /// Judged by the mesh-wide policies only.
    MeshWide,
}

/// Operator-written entries naming a workload by what Istio's CUSTOM hop does send.
#[derive(Debug, Clone, Default)]
pub struct WorkloadTable {
    entries: Box<[WorkloadEntry]>,
}

/// One row of the workloads table: the first row whose selector fits the request applies.
#[derive(Debug, Clone)]
pub struct WorkloadEntry {
    /// What a request must carry for the row to apply.
    pub selector: WorkloadSelector,
    /// The workload's namespace.
    pub namespace: Option<Box<str>>,
    /// The workload's labels.
    pub labels: HashMap<String, String>,
}

/// How a workloads-table row recognizes a request.
#[derive(Debug, Clone)]
pub enum WorkloadSelector {
    /// The destination principal, `spiffe://` dropped.
    Principal(Box<str>),
    /// The destination address.
    Address(IpMatch),
    /// The request's authority, compared without case and with or without its port.
    Host(Box<str>),
}

impl WorkloadSelector {
    fn fits(&self, request: &Request<'_>) -> bool {
        match self {
            Self::Principal(principal) => {
                SpiffeId::parse(request.destination.principal).is_some_and(|id| id.principal == &**principal)
            }
            Self::Address(block) => request.destination.address.is_some_and(|address| block.matches(address)),
            Self::Host(host) => request.http.as_ref().is_some_and(|http| {
                let without_port = http.host.rsplit_once(':').map_or(http.host, |(name, _)| name);
                http.host.eq_ignore_ascii_case(host) || without_port.eq_ignore_ascii_case(host)
            }),
        }
    }
}

impl WorkloadTable {
    /// The table of these rows, tried in order.
    pub fn new(entries: Vec<WorkloadEntry>) -> Self {
        Self { entries: entries.into() }
    }

    /// Finds the request's workload. The namespace comes from the `namespace` context
    /// extension, else from the destination principal, else from the table; labels from the
    /// other context extensions, then the destination's labels, then the table.
    pub fn resolve<'r>(&'r self, request: &'r Request<'_>) -> Workload<'r> {
        let entry = self.entries.iter().find(|entry| entry.selector.fits(request));
        let namespace = request
            .context_extensions
            .get(NAMESPACE_EXTENSION)
            .or_else(|| SpiffeId::parse(request.destination.principal).and_then(|id| id.namespace))
            .or_else(|| entry.and_then(|entry| entry.namespace.as_deref()));
        Workload {
            namespace,
            context_extensions: &request.context_extensions,
            destination_labels: &request.destination.labels,
            table_labels: entry.map(|entry| &entry.labels),
        }
    }
}

/// A policy's `selector.matchLabels`, in key order; empty selects every workload of the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Box<[(Box<str>, Box<str>)]>);

impl LabelSelector {
    /// A selector requiring every `(key, value)` label; keys are sorted and kept once.
    pub fn new(labels: impl IntoIterator<Item = (Box<str>, Box<str>)>) -> Self {
        let labels: std::collections::BTreeMap<_, _> = labels.into_iter().collect();
        Self(labels.into_iter().collect())
    }

    /// Whether every label of the selector is the workload's.
    pub fn selects(&self, workload: &Workload<'_>) -> bool {
        self.first_label().is_none_or(|(key, value)| workload.label(key) == Some(value))
            && self.selects_beyond_first(workload)
    }

    /// The label with the first key; `None` for a selector that selects every workload.
    pub fn first_label(&self) -> Option<(&str, &str)> {
        self.0.first().map(|(key, value)| (&**key, &**value))
    }

    /// Whether the labels after the first are the workload's: [`Self::selects`] for a
    /// workload known to have the first.
    pub fn selects_beyond_first(&self, workload: &Workload<'_>) -> bool {
        self.0.iter().skip(1).all(|(key, value)| workload.label(key) == Some(&**value))
    }
}

/// The workload a request is for.
#[derive(Debug, Clone)]
pub struct Workload<'r> {
    /// The workload's namespace, when a source names it.
    pub namespace: Option<&'r str>,
    context_extensions: &'r StrMap<'r>,
    destination_labels: &'r StrMap<'r>,
    table_labels: Option<&'r HashMap<String, String>>,
}

impl<'r> Workload<'r> {
    /// Whether a source named the workload's namespace.
    pub fn is_identified(&self) -> bool {
        self.namespace.is_some()
    }

    /// A label's value, from the first source that has it. The `namespace` context extension
    /// names the namespace, not a label.
    pub fn label(&self, key: &str) -> Option<&'r str> {
        let from_extensions = if key == NAMESPACE_EXTENSION { None } else { self.context_extensions.get(key) };
        from_extensions
            .or_else(|| self.destination_labels.get(key))
            .or_else(|| self.table_labels?.get(key).map(String::as_str))
    }

    /// Every label of the workload in key order, each from the first source that has it.
    pub fn labels(&self) -> Vec<(&'r str, &'r str)> {
        let extensions = self.context_extensions.names().filter(|&key| key != NAMESPACE_EXTENSION);
        let table = self.table_labels.into_iter().flat_map(|labels| labels.keys().map(String::as_str));
        let mut keys: Vec<&'r str> = extensions.chain(self.destination_labels.names()).chain(table).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter().filter_map(|key| Some((key, self.label(key)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{HttpRequest, Peer};

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn table() -> WorkloadTable {
        WorkloadTable::new(vec![
            WorkloadEntry {
                selector: WorkloadSelector::Host("jobs.example.com".into()),
                namespace: Some("job-service".into()),
                labels: map(&[("app", "job-service"), ("tier", "api")]),
            },
            WorkloadEntry {
                selector: WorkloadSelector::Principal("cluster.local/ns/billing/sa/billing".into()),
                namespace: Some("table-ns".into()),
                labels: map(&[("app", "billing")]),
            },
            WorkloadEntry {
                selector: WorkloadSelector::Address(IpMatch::parse("10.9.0.0/16").expect("cidr")),
                namespace: Some("by-address".into()),
                labels: map(&[("app", "by-address")]),
            },
        ])
    }

    #[test]
    fn context_extensions_come_first() {
        let table = table();
        let extensions = map(&[("namespace", "ctx-ns"), ("app", "from-ctx")]);
        let request = Request {
            context_extensions: StrMap::from(&extensions),
            destination: Peer {
                principal: "spiffe://cluster.local/ns/peer-ns/sa/x",
                labels: StrMap::from_entries(vec![("app", "from-peer"), ("version", "v1"), ("version", "v0")]),
                ..Peer::default()
            },
            http: Some(HttpRequest { host: "JOBS.example.com:443", ..HttpRequest::default() }),
            ..Request::default()
        };
        let workload = table.resolve(&request);
        assert_eq!(workload.namespace, Some("ctx-ns"));
        assert_eq!(workload.label("app"), Some("from-ctx"));
        assert_eq!(workload.label("version"), Some("v1"));
        assert_eq!(workload.label("tier"), Some("api"));
        assert_eq!(workload.label("namespace"), None);
        assert_eq!(workload.label("missing"), None);
        assert_eq!(workload.labels(), [("app", "from-ctx"), ("tier", "api"), ("version", "v1")]);
    }

    #[test]
    fn destination_principal_names_the_namespace_before_the_table() {
        let table = table();
        let request = Request {
            destination: Peer { principal: "spiffe://cluster.local/ns/billing/sa/billing", ..Peer::default() },
            ..Request::default()
        };
        let workload = table.resolve(&request);
        assert_eq!(workload.namespace, Some("billing"));
        assert_eq!(workload.label("app"), Some("billing"));
    }

    #[test]
    fn the_table_names_workloads_by_address_or_host() {
        let table = table();
        let by_address = Request {
            destination: Peer { address: Some("10.9.1.1".parse().expect("ip")), ..Peer::default() },
            ..Request::default()
        };
        assert_eq!(table.resolve(&by_address).namespace, Some("by-address"));
        let by_host = Request {
            http: Some(HttpRequest { host: "jobs.example.com", ..HttpRequest::default() }),
            ..Request::default()
        };
        assert_eq!(table.resolve(&by_host).namespace, Some("job-service"));
        let unknown = Request {
            http: Some(HttpRequest { host: "other.example.com", ..HttpRequest::default() }),
            ..Request::default()
        };
        let workload = table.resolve(&unknown);
        assert_eq!((workload.namespace, workload.label("app")), (None, None));
    }
}
