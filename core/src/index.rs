//! Compiled policies indexed by namespace and, within one, by the first label of their selector, so that a check reads only the policies that can select its workload; pure, never decides.

use std::collections::{BTreeMap, HashMap};

use super::authn::AuthnPolicy;
use super::policy::{Action, Policy};
use super::workload::{LabelSelector, Workload};

/// How a policy takes part in a decision; a bucket holds its policies in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    Deny,
    Allow,
    Audit,
    DryRunDeny,
    DryRunAllow,
}

impl PolicyKind {
    pub fn of(policy: &Policy) -> Self {
        match (policy.action, policy.dry_run) {
            (Action::Deny, false) => Self::Deny,
            (Action::Allow, false) => Self::Allow,
            (Action::Deny, true) => Self::DryRunDeny,
            (Action::Allow, true) => Self::DryRunAllow,
            (Action::Audit, _) => Self::Audit,
        }
    }
}

/// Policies grouped so that a check looks only at its workload's namespace and the mesh-wide ones.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    mesh_wide: Bucket,
    by_namespace: HashMap<Box<str>, Bucket>,
    policy_count: usize,
}

impl PolicyIndex {
    /// Indexes policies and RequestAuthentications, each given in name order. Those without
    /// a namespace or in `root_namespace` apply to every workload.
    pub fn new(policies: Vec<Policy>, authn: Vec<AuthnPolicy>, root_namespace: &str) -> Self {
        let policy_count = policies.len();
        let mut grouped: HashMap<Box<str>, (Vec<Policy>, Vec<AuthnPolicy>)> = HashMap::new();
        let home = |namespace: &str| -> Box<str> {
            if namespace == root_namespace { Box::default() } else { namespace.into() }
        };
        for policy in policies {
            grouped.entry(home(&policy.id.namespace)).or_default().0.push(policy);
        }
        for policy in authn {
            grouped.entry(home(&policy.id.namespace)).or_default().1.push(policy);
        }
        let mut index = Self { policy_count, ..Self::default() };
        for (namespace, (policies, authn)) in grouped {
            let bucket = Bucket::new(policies, authn);
            if namespace.is_empty() {
                index.mesh_wide = bucket;
            } else {
                index.by_namespace.insert(namespace, bucket);
            }
        }
        index
    }

    /// How many AuthorizationPolicies the index holds.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// Whether any policy or RequestAuthentication is scoped to a namespace (not mesh-wide).
    pub fn has_namespaced(&self) -> bool {
        !self.by_namespace.is_empty()
    }

    /// Every RequestAuthentication of the set.
    pub fn all_authn(&self) -> impl Iterator<Item = &AuthnPolicy> {
        self.all_buckets().flat_map(|bucket| &bucket.authn)
    }

    /// The buckets whose policies can apply to the workload: the mesh-wide one and its
    /// namespace's, looked up once for a check.
    pub fn scope(&self, workload: &Workload<'_>) -> Scope<'_> {
        let namespace = workload.namespace.and_then(|ns| self.by_namespace.get(ns));
        Scope { mesh_wide: &self.mesh_wide, namespace }
    }

    fn all_buckets(&self) -> impl Iterator<Item = &Bucket> {
        std::iter::once(&self.mesh_wide).chain(self.by_namespace.values())
    }
}

/// The buckets one workload's policies come from.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'s> {
    mesh_wide: &'s Bucket,
    namespace: Option<&'s Bucket>,
}

impl<'s> Scope<'s> {
    /// The AuthorizationPolicies that select the workload: mesh-wide ones first, each kind
    /// in name order.
    pub fn policies(&self, workload: &Workload<'_>) -> Vec<&'s Policy> {
        let mut selected = Vec::new();
        for bucket in self.buckets() {
            bucket.policy_selectors.select(&bucket.policies, workload, |policy| selected.push(policy));
        }
        selected
    }

    /// Calls `visit` with each RequestAuthentication that selects the workload, mesh-wide ones
    /// first, in name order: the caller collects their rules with no list in between.
    pub fn authn(&self, workload: &Workload<'_>, mut visit: impl FnMut(&'s AuthnPolicy)) {
        for bucket in self.buckets() {
            bucket.authn_selectors.select(&bucket.authn, workload, &mut visit);
        }
    }

    fn buckets(&self) -> impl Iterator<Item = &'s Bucket> {
        std::iter::once(self.mesh_wide).chain(self.namespace)
    }
}

/// The policies of one namespace: AuthorizationPolicies by kind, each kind in name order, and
/// RequestAuthentications in name order.
#[derive(Debug, Default)]
struct Bucket {
    policies: Vec<Policy>,
    policy_selectors: SelectorIndex,
    authn: Vec<AuthnPolicy>,
    authn_selectors: SelectorIndex,
}

impl Bucket {
    fn new(mut policies: Vec<Policy>, authn: Vec<AuthnPolicy>) -> Self {
        // Stable: name order stays within each kind.
        policies.sort_by_key(PolicyKind::of);
        Self {
            policy_selectors: SelectorIndex::new(policies.iter().map(|policy| &policy.selector)),
            policies,
            authn_selectors: SelectorIndex::new(authn.iter().map(|policy| &policy.selector)),
            authn,
        }
    }
}

/// Where in a list the items with each selector are: those that select every workload, and the
/// others by the key and value of their selector's first label.
#[derive(Debug, Default)]
struct SelectorIndex {
    everywhere: Box<[usize]>,
    /// By key (few: a slice is read faster than a map), then by value.
    by_first_label: Box<[(Box<str>, PositionsByValue)]>,
}

/// Positions in the indexed list, by the value of one label.
type PositionsByValue = HashMap<Box<str>, Box<[usize]>>;

/// Something that a label selector applies to.
trait Selected {
    fn selector(&self) -> &LabelSelector;
}

impl Selected for Policy {
    fn selector(&self) -> &LabelSelector {
        &self.selector
    }
}

impl Selected for AuthnPolicy {
    fn selector(&self) -> &LabelSelector {
        &self.selector
    }
}

impl SelectorIndex {
    fn new<'a>(selectors: impl Iterator<Item = &'a LabelSelector>) -> Self {
        let mut everywhere = Vec::new();
        let mut by_first_label: BTreeMap<Box<str>, HashMap<Box<str>, Vec<usize>>> = BTreeMap::new();
        for (position, selector) in selectors.enumerate() {
            match selector.first_label() {
                None => everywhere.push(position),
                Some((key, value)) => {
                    by_first_label.entry(key.into()).or_default().entry(value.into()).or_default().push(position);
                }
            }
        }
        let by_first_label = by_first_label
            .into_iter()
            .map(|(key, values)| (key, values.into_iter().map(|(value, at)| (value, at.into())).collect()))
            .collect();
        Self { everywhere: everywhere.into(), by_first_label }
    }

    /// Calls `visit` with each item of `items` (the list the index was built from) whose
    /// selector picks the workload, in the list's order.
    #[expect(clippy::indexing_slicing, reason = "the positions were taken from `items` when the index was built")]
    fn select<'i, T: Selected>(&self, items: &'i [T], workload: &Workload<'_>, mut visit: impl FnMut(&'i T)) {
        let labelled = self
            .by_first_label
            .iter()
            .filter_map(|(key, values)| workload.label(key).and_then(|value| values.get(value)));
        let mut lists = std::iter::once(&self.everywhere).chain(labelled).map(|positions| &**positions);
        let mut lists = lists.by_ref().filter(|positions| !positions.is_empty());
        let first = lists.next().unwrap_or_default();
        let merged: Vec<usize>;
        let positions = match lists.next() {
            // One list, the usual case: already in order, and nothing to allocate.
            None => first,
            Some(second) => {
                let mut all = [first, second].concat();
                lists.for_each(|more| all.extend_from_slice(more));
                all.sort_unstable();
                merged = all;
                &merged
            }
        };
        for item in positions.iter().map(|&position| &items[position]) {
            // The first label is known to fit: found by it, or there is none.
            if item.selector().selects_beyond_first(workload) {
                visit(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::PolicyId;
    use crate::request::{Request, StrMap};
    use crate::workload::WorkloadTable;

    const ROOT: &str = "istio-system";
    const SELECTORS: [&[(&str, &str)]; 7] = [
        &[],
        &[("app", "a")],
        &[("app", "b")],
        &[("app", "a"), ("tier", "x")],
        &[("tier", "x")],
        &[("version", "v1")],
        &[("version", "v1"), ("app", "a")],
    ];
    const ACTIONS: [(Action, bool); 5] = [
        (Action::Deny, false),
        (Action::Allow, false),
        (Action::Audit, false),
        (Action::Deny, true),
        (Action::Allow, true),
    ];

    fn selector(labels: &[(&str, &str)]) -> LabelSelector {
        LabelSelector::new(labels.iter().map(|&(key, value)| (key.into(), value.into())))
    }

    fn id(namespace: &str, serial: usize) -> Arc<PolicyId> {
        Arc::new(PolicyId { namespace: namespace.into(), name: format!("p{serial:03}").into() })
    }

    /// Every selector in every namespace kind (none, the root, two others) and, for the
    /// AuthorizationPolicies, every kind; in name order, as the snapshot gives them.
    fn set() -> (Vec<Policy>, Vec<AuthnPolicy>) {
        let mut policies = Vec::new();
        let mut authn = Vec::new();
        for namespace in ["", ROOT, "ns1", "ns2"] {
            for (serial, labels) in SELECTORS.iter().enumerate() {
                authn.push(AuthnPolicy {
                    id: id(namespace, serial),
                    selector: selector(labels),
                    rules: Box::default(),
                });
                for (offset, &(action, dry_run)) in ACTIONS.iter().enumerate() {
                    // Kinds interleaved in name order, so that the bucket must regroup them.
                    let serial = serial * ACTIONS.len() + (offset * 3) % ACTIONS.len();
                    let (id, selector) = (id(namespace, serial), selector(labels));
                    policies.push(Policy { id, action, dry_run, selector, rules: Box::default() });
                }
            }
        }
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        (policies, authn)
    }

    fn mesh_wide(id: &PolicyId) -> bool {
        id.namespace.is_empty() || &*id.namespace == ROOT
    }

    /// The policies that apply, found the slow way: every one is tried.
    fn applicable<'p, T>(
        all: &'p [T],
        workload: &Workload<'_>,
        of: impl Fn(&T) -> (&PolicyId, &LabelSelector),
    ) -> Vec<&'p T> {
        let in_scope = |item: &&T| {
            let (id, selector) = of(item);
            (mesh_wide(id) || Some(&*id.namespace) == workload.namespace) && selector.selects(workload)
        };
        let mut found: Vec<&T> = all.iter().filter(in_scope).collect();
        found.sort_by_key(|item| !mesh_wide(of(item).0));
        found
    }

    #[test]
    fn the_index_selects_what_trying_every_policy_selects_in_the_same_order() {
        let (policies, authn) = set();
        let expected_policies = policies.clone();
        let expected_authn = authn.clone();
        let index = PolicyIndex::new(policies, authn, ROOT);
        assert_eq!(index.policy_count(), expected_policies.len());
        assert_eq!(index.all_authn().count(), expected_authn.len());
        let table = WorkloadTable::default();
        let mut checked = 0;
        for namespace in [None, Some("ns1"), Some("ns2"), Some("ns3"), Some(ROOT)] {
            for app in [None, Some("a"), Some("b"), Some("c")] {
                for tier in [None, Some("x"), Some("y")] {
                    for version in [None, Some("v1")] {
                        let labels = [("namespace", namespace), ("app", app), ("tier", tier), ("version", version)];
                        let entries = labels.iter().filter_map(|&(key, value)| Some((key, value?))).collect();
                        let request =
                            Request { context_extensions: StrMap::from_entries(entries), ..Request::default() };
                        let workload = table.resolve(&request);

                        let mut expected = applicable(&expected_policies, &workload, |p| (&p.id, &p.selector));
                        expected
                            .sort_by_key(|policy| u8::from(!mesh_wide(&policy.id)) * 10 + PolicyKind::of(policy) as u8);
                        let names =
                            |found: &[&Policy]| found.iter().map(|policy| policy.id.to_string()).collect::<Vec<_>>();
                        let scope = index.scope(&workload);
                        assert_eq!(names(&scope.policies(&workload)), names(&expected), "{labels:?}");

                        let expected = applicable(&expected_authn, &workload, |p| (&p.id, &p.selector));
                        let mut found = Vec::new();
                        scope.authn(&workload, |policy| found.push(policy.id.to_string()));
                        let expected: Vec<String> = expected.iter().map(|policy| policy.id.to_string()).collect();
                        assert_eq!(found, expected, "{labels:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 5 * 4 * 3 * 2);
    }

    #[test]
    fn a_selector_keeps_each_key_once_in_key_order() {
        let labels = selector(&[("version", "v1"), ("app", "a"), ("app", "b")]);
        assert_eq!(labels.first_label(), Some(("app", "b")));
        assert_eq!(selector(&[]).first_label(), None);
    }
}
