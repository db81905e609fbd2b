//! Compiled AuthorizationPolicies and how one rule matches a request's attributes; pure.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::data::Data;
use super::identity::Identity;
use super::matcher::{IpMatch, PathMatch, StringMatch};
use super::request::{HeaderReading, HeaderView, Request, SpiffeId};
use super::value::{self, Expr, Unevaluable};
use super::workload::LabelSelector;

/// What a policy does when one of its rules matches. CUSTOM policies route traffic to this
/// server and are not part of a compiled set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `ALLOW`: a request on a workload with ALLOW policies passes only if one of their rules matches.
    Allow,
    /// `DENY`: a request that matches one of its rules is denied, whatever ALLOW policies say.
    Deny,
    /// `AUDIT`: a match is recorded; the decision is unchanged.
    Audit,
}

/// A policy's `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    /// `metadata.namespace`; empty for a policy that has none.
    pub namespace: Box<str>,
    /// `metadata.name`.
    pub name: Box<str>,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One compiled AuthorizationPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Which policy this is, as decisions and logs name it.
    pub id: Arc<PolicyId>,
    /// `spec.action`: what a matching rule does.
    pub action: Action,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    pub dry_run: bool,
    /// `spec.selector`: the workloads of the namespace the policy applies to.
    pub selector: LabelSelector,
    /// `spec.rules`: the policy matches when any rule does; none never matches.
    pub rules: Box<[Rule]>,
}

impl Policy {
    /// The path of every claim the policy reads (`aud` and `azp` included, and the claims its
    /// value expressions read).
    pub fn claim_paths(&self) -> impl Iterator<Item = Box<[Box<str>]>> + '_ {
        let conjunctions =
            self.rules.iter().flat_map(|rule| rule.from.iter().chain(rule.to.iter()).chain([&rule.when]));
        conjunctions.flat_map(|all| all.0.iter()).flat_map(|predicate| predicate.test.claim_paths())
    }

    /// The index of the first rule that matches; `None` when none does (always for no rules).
    pub fn first_matching_rule(&self, attributes: &Attributes<'_>) -> Option<usize> {
        self.rules.iter().position(|rule| rule.matches(attributes, self.action))
    }
}

/// A rule: any source, any operation, and every condition.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// `from[].source`: empty matches any source.
    pub from: Box<[Conjunction]>,
    /// `to[].operation`: empty matches any operation.
    pub to: Box<[Conjunction]>,
    /// `when`: every condition must hold.
    pub when: Conjunction,
}

impl Rule {
    /// Whether the request matches: some `from` and some `to` entry (or none given) and the
    /// whole `when` hold, each read as a rule of `action` reads it.
    pub fn matches(&self, attributes: &Attributes<'_>, action: Action) -> bool {
        let any_of = |alternatives: &[Conjunction]| {
            alternatives.is_empty() || alternatives.iter().any(|all| all.holds(attributes, action))
        };
        any_of(&self.from) && any_of(&self.to) && self.when.holds(attributes, action)
    }
}

/// Predicates that must all hold: the fields of one source or operation, or a rule's `when`.
#[derive(Debug, Clone, Default)]
pub struct Conjunction(pub Box<[Predicate]>);

impl Conjunction {
    /// Whether every predicate holds in a rule of `action`; true when there are none.
    pub fn holds(&self, attributes: &Attributes<'_>, action: Action) -> bool {
        self.0.iter().all(|predicate| predicate.holds(attributes, action))
    }
}

/// One field of a rule (`paths`, `notPrincipals`, a `when` key with `values` or `notValues`).
#[derive(Debug, Clone)]
pub struct Predicate {
    /// The attribute read and the values accepted.
    pub test: Test,
    /// `notX` / `notValues`: holds when no value matches.
    pub negated: bool,
}

impl Predicate {
    /// On a TCP check an HTTP-only field cannot be evaluated: it fails an ALLOW rule and is
    /// ignored in DENY and AUDIT rules, as Istio builds its TCP filters.
    ///
    /// A header whose values came joined with commas has two readings, the value whole and its
    /// parts: the predicate must hold under both in an ALLOW rule, under either in DENY and
    /// AUDIT rules, so that neither reading lets a request through that the other would stop.
    pub fn holds(&self, attributes: &Attributes<'_>, action: Action) -> bool {
        let holds_when_read = |reading| self.test.evaluate(attributes, reading).map(|matched| matched != self.negated);
        let Some(whole) = holds_when_read(HeaderReading::Whole) else { return action != Action::Allow };
        if !self.test.is_ambiguous(attributes) {
            return whole;
        }
        let parts = holds_when_read(HeaderReading::Parts) == Some(true);
        if action == Action::Allow { whole && parts } else { whole || parts }
    }
}

/// `requestPrincipals` entries split at the last `/` into issuer and subject, as Istio does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPrincipalMatch {
    /// What the token's `iss` must match.
    pub issuer: StringMatch,
    /// What the token's `sub` must match.
    pub subject: StringMatch,
}

impl RequestPrincipalMatch {
    /// Splits one `requestPrincipals` value: a leading or trailing `*` becomes a suffix, prefix
    /// or presence match on the side it stands on, and a value without `/` is an issuer whose
    /// subject is empty.
    pub fn parse(value: &str) -> Self {
        let split = value.rfind('/').map(|at| (&value[..at], &value[at + 1..]));
        let exact = |text: &str| StringMatch::Exact(text.into());
        let (issuer, subject) = match split {
            _ if value == "*" => (StringMatch::Presence, StringMatch::Presence),
            Some((issuer, subject)) if value.starts_with('*') => {
                let issuer =
                    if issuer == "*" { StringMatch::Presence } else { StringMatch::Suffix(issuer[1..].into()) };
                (issuer, exact(subject))
            }
            None if value.starts_with('*') => (StringMatch::Presence, StringMatch::Suffix(value[1..].into())),
            Some((issuer, subject)) if value.ends_with('*') => {
                let subject = if subject == "*" {
                    StringMatch::Presence
                } else {
                    StringMatch::Prefix(subject[..subject.len() - 1].into())
                };
                (exact(issuer), subject)
            }
            None if value.ends_with('*') => {
                (StringMatch::Prefix(value[..value.len() - 1].into()), StringMatch::Presence)
            }
            Some((issuer, subject)) => (exact(issuer), exact(subject)),
            None => (exact(value), exact("")),
        };
        Self { issuer, subject }
    }

    fn matches(&self, identity: &Identity) -> bool {
        self.issuer.matches(identity.issuer()) && self.subject.matches(identity.subject())
    }
}

/// A service account as `serviceAccounts` names it: namespace (the policy's when elided) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// The namespace of the account, matched against the peer's `/ns/` segment.
    pub namespace: Box<str>,
    /// The account's name, matched against the peer's `/sa/` segment.
    pub name: Box<str>,
}

/// What a predicate looks at, and the values it accepts (any of them).
#[derive(Debug, Clone)]
pub enum Test {
    /// `principals` / `source.principal`: the peer certificate's SPIFFE ID, `spiffe://` dropped.
    SourcePrincipal(Box<[StringMatch]>),
    /// `namespaces` / `source.namespace`: the namespace in the peer's SPIFFE ID.
    SourceNamespace(Box<[StringMatch]>),
    /// `serviceAccounts`: the namespace and service account in the peer's SPIFFE ID, both equal.
    SourceServiceAccount(Box<[ServiceAccount]>),
    /// `ipBlocks` / `source.ip`: the address of the direct peer.
    SourceIp(Box<[IpMatch]>),
    /// `remoteIpBlocks` / `remote.ip`: the client address after trusted proxies.
    RemoteIp(Box<[IpMatch]>),
    /// `destination.ip`: the address the connection was made to.
    DestinationIp(Box<[IpMatch]>),
    /// `ports` / `destination.port`: the port the connection was made to.
    DestinationPort(Box<[u16]>),
    /// `connection.sni`: the server name the client asked for in its TLS handshake.
    Sni(Box<[StringMatch]>),
    /// `hosts`: the request's host, compared without regard to case; HTTP only.
    Host(Box<[StringMatch]>),
    /// `methods`: the request's method; HTTP only.
    Method(Box<[StringMatch]>),
    /// `paths`: the normalized path; HTTP only.
    Path(Box<[PathMatch]>),
    /// `request.headers[name]`: any value of the header; HTTP only.
    Header {
        /// The header's name, lowercase.
        name: Box<str>,
        /// The patterns one of its values must match; `*` also matches an empty value.
        values: Box<[StringMatch]>,
    },
    /// `requestPrincipals` / `request.auth.principal`: the verified token's `iss/sub`; HTTP only.
    RequestPrincipal(Box<[RequestPrincipalMatch]>),
    /// `request.auth.audiences`: any value of the verified token's `aud`; HTTP only.
    Audience(Box<[StringMatch]>),
    /// `request.auth.presenter`: the verified token's `azp`; HTTP only.
    Presenter(Box<[StringMatch]>),
    /// `request.auth.claims[...]`: any value of a claim of the verified token; HTTP only.
    Claim {
        /// The claim's path, one name per level of nesting.
        path: Box<[Box<str>]>,
        /// The patterns one of the claim's values must match.
        values: Box<[StringMatch]>,
    },
    /// A computed key (`request.path.params[NAME]`, `data.SOURCE[EXPR].FIELD`) with `values`:
    /// one of its values must match one of the patterns; cannot be evaluated when the key cannot.
    Computed {
        /// The key.
        key: Expr,
        /// The patterns, as Istio reads them.
        values: Box<[StringMatch]>,
    },
    /// `valuesFrom`: one value of the key equals one value of the expressions (their union),
    /// exactly; cannot be evaluated when the key or any expression cannot.
    ValuesFrom {
        /// The key, any key a condition may name.
        key: Expr,
        /// The value expressions.
        from: Box<[Expr]>,
    },
}

/// Everything a predicate may read, computed once per check.
#[derive(Debug, Clone)]
pub struct Attributes<'r> {
    /// The request as the door received it.
    pub request: &'r Request<'r>,
    /// The peer certificate's SPIFFE ID; `None` without mutual TLS.
    pub source: Option<SpiffeId<'r>>,
    /// The client address after trusted proxies (`remote.ip`).
    pub remote_ip: Option<IpAddr>,
    /// The normalized path; empty on a TCP check.
    pub path: &'r str,
    /// The headers as the service will receive them; `None` on a TCP check.
    pub headers: Option<HeaderView<'r>>,
    /// The verified token's identity; `None` when the request carried none.
    pub identity: Option<&'r Identity>,
    /// The data sources' tables as this check reads them (empty when none is loaded).
    pub data: &'r Data,
}

fn any_string(patterns: &[StringMatch], value: Option<&str>) -> bool {
    value.is_some_and(|value| patterns.iter().any(|pattern| pattern.matches(value)))
}

fn any_ip(blocks: &[IpMatch], address: Option<IpAddr>) -> bool {
    address.is_some_and(|address| blocks.iter().any(|block| block.matches(address)))
}

fn any_claim_value<S: AsRef<str>>(patterns: &[StringMatch], identity: Option<&Identity>, path: &[S]) -> bool {
    identity.is_some_and(|id| id.claim_values(path).any(|value| patterns.iter().any(|pattern| pattern.matches(value))))
}

impl Test {
    /// The claims the test reads.
    fn claim_paths(&self) -> Vec<Box<[Box<str>]>> {
        let mut paths = Vec::new();
        match self {
            Self::Audience(_) => paths.push(Box::from([Box::from("aud")])),
            Self::Presenter(_) => paths.push(Box::from([Box::from("azp")])),
            Self::Claim { path, .. } => paths.push(path.clone()),
            Self::Computed { key, .. } => key.claim_paths(&mut paths),
            Self::ValuesFrom { key, from } => {
                key.claim_paths(&mut paths);
                from.iter().for_each(|expression| expression.claim_paths(&mut paths));
            }
            _ => {}
        }
        paths
    }

    /// For a test that reads value expressions, whether it holds or why it cannot be
    /// evaluated; `None` for Istio's own tests.
    pub fn evaluate_dynamic<'e>(&'e self, attributes: &Attributes<'_>) -> Option<Result<bool, Unevaluable<'e>>> {
        match self {
            Self::Computed { key, values } => Some(value::key_matches(key, values, attributes)),
            Self::ValuesFrom { key, from } => Some(value::key_in(key, from, attributes)),
            _ => None,
        }
    }

    /// Whether a header test reads a header whose joined value has two readings.
    fn is_ambiguous(&self, attributes: &Attributes<'_>) -> bool {
        match (self, &attributes.headers) {
            (Self::Header { name, .. }, Some(headers)) => headers.is_ambiguous(name),
            _ => false,
        }
    }

    /// Whether a value matches, header values read as `reading` says; `None` when the field is
    /// HTTP-only and the check is TCP.
    pub fn evaluate(&self, attributes: &Attributes<'_>, reading: HeaderReading) -> Option<bool> {
        let request = attributes.request;
        let source = attributes.source;
        let matched = match self {
            Self::SourcePrincipal(patterns) => any_string(patterns, source.map(|id| id.principal)),
            Self::SourceNamespace(patterns) => any_string(patterns, source.and_then(|id| id.namespace)),
            Self::SourceServiceAccount(accounts) => source.is_some_and(|id| {
                accounts.iter().any(|account| {
                    id.namespace == Some(&*account.namespace) && id.service_account == Some(&*account.name)
                })
            }),
            Self::SourceIp(blocks) => any_ip(blocks, request.source.address),
            Self::RemoteIp(blocks) => any_ip(blocks, attributes.remote_ip),
            Self::DestinationIp(blocks) => any_ip(blocks, request.destination.address),
            Self::DestinationPort(ports) => request.destination.port.is_some_and(|port| ports.contains(&port)),
            Self::Sni(patterns) => any_string(patterns, Some(request.sni)),
            Self::Host(patterns) => {
                let host = request.http.as_ref()?.host;
                patterns.iter().any(|pattern| pattern.matches_ignore_case(host))
            }
            Self::Method(patterns) => any_string(patterns, Some(request.http.as_ref()?.method)),
            Self::Path(patterns) => {
                request.http.as_ref()?;
                patterns.iter().any(|pattern| pattern.matches(attributes.path))
            }
            Self::Header { name, values } => {
                // Istio turns `*` into a presence match on headers: an empty value is present.
                // Each value of a repeated header is matched on its own, as Envoy's RBAC does.
                attributes.headers.as_ref()?.any_value(name, reading, |value| {
                    values.iter().any(|pattern| *pattern == StringMatch::Presence || pattern.matches(value))
                })
            }
            Self::RequestPrincipal(patterns) => {
                request.http.as_ref()?;
                attributes.identity.is_some_and(|id| patterns.iter().any(|pattern| pattern.matches(id)))
            }
            Self::Audience(patterns) => {
                request.http.as_ref()?;
                any_claim_value(patterns, attributes.identity, &["aud"])
            }
            Self::Presenter(patterns) => {
                request.http.as_ref()?;
                any_claim_value(patterns, attributes.identity, &["azp"])
            }
            Self::Claim { path, values } => {
                request.http.as_ref()?;
                any_claim_value(values, attributes.identity, path)
            }
            Self::Computed { .. } | Self::ValuesFrom { .. } => self.evaluate_dynamic(attributes)?.ok()?,
        };
        Some(matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::HttpRequest;

    /// Whether `x-tenant` `values: [acme]` (or `notValues` when `negated`) holds in a rule of
    /// `action`, for one request.
    fn tenant_is_acme_holds(http: &HttpRequest<'_>, negated: bool, action: Action) -> bool {
        let request = Request { http: Some(http.clone()), ..Request::default() };
        let attributes = Attributes {
            request: &request,
            source: None,
            remote_ip: None,
            path: "/",
            headers: request.http.as_ref().map(HeaderView::as_sent),
            identity: None,
            data: &Data::default(),
        };
        let test = Test::Header { name: "x-tenant".into(), values: Box::new([StringMatch::Exact("acme".into())]) };
        Predicate { test, negated }.holds(&attributes, action)
    }

    fn tenants(values: &[&'static str], joined_headers: bool) -> HttpRequest<'static> {
        let headers = values.iter().map(|&value| ("x-tenant", value)).collect();
        HttpRequest { headers, joined_headers, ..HttpRequest::default() }
    }

    #[test]
    fn each_value_of_a_repeated_header_is_matched_on_its_own() {
        let (sent_twice, others) = (tenants(&["other", "acme"], false), tenants(&["other", "more"], false));
        for action in [Action::Allow, Action::Deny] {
            assert!(tenant_is_acme_holds(&sent_twice, false, action));
            assert!(!tenant_is_acme_holds(&sent_twice, true, action), "notValues: no value may be excluded");
            assert!(!tenant_is_acme_holds(&others, false, action));
            assert!(tenant_is_acme_holds(&others, true, action));
        }
    }

    #[test]
    fn a_joined_value_must_hold_read_whole_and_split_to_allow_and_either_way_to_deny() {
        let joined = tenants(&["other,acme"], true);
        // `values`: holds split, not whole.
        assert!(!tenant_is_acme_holds(&joined, false, Action::Allow));
        assert!(tenant_is_acme_holds(&joined, false, Action::Deny));
        assert!(tenant_is_acme_holds(&joined, false, Action::Audit));
        // `notValues`: holds whole, not split.
        assert!(!tenant_is_acme_holds(&joined, true, Action::Allow));
        assert!(tenant_is_acme_holds(&joined, true, Action::Deny));
        // Without a comma there is one reading.
        let single = tenants(&["acme"], true);
        assert!(tenant_is_acme_holds(&single, false, Action::Allow));
        assert!(!tenant_is_acme_holds(&single, true, Action::Deny));
        // The same value from a request that keeps values apart is one value, commas and all.
        let kept_apart = tenants(&["other,acme"], false);
        assert!(!tenant_is_acme_holds(&kept_apart, false, Action::Deny));
    }

    #[test]
    fn request_principals_split_like_istio() {
        use StringMatch::{Exact, Prefix, Presence, Suffix};
        let table: Vec<(&str, StringMatch, StringMatch)> = vec![
            ("*", Presence, Presence),
            ("https://kc/realms/jobs/u1", Exact("https://kc/realms/jobs".into()), Exact("u1".into())),
            ("https://kc/realms/jobs/*", Exact("https://kc/realms/jobs".into()), Presence),
            ("https://kc/realms/jobs/u*", Exact("https://kc/realms/jobs".into()), Prefix("u".into())),
            ("*/u1", Presence, Exact("u1".into())),
            ("*jobs/u1", Suffix("jobs".into()), Exact("u1".into())),
            ("*abc", Presence, Suffix("abc".into())),
            ("abc*", Prefix("abc".into()), Presence),
            ("issuer", Exact("issuer".into()), Exact("".into())),
        ];
        for (value, issuer, subject) in table {
            assert_eq!(RequestPrincipalMatch::parse(value), RequestPrincipalMatch { issuer, subject }, "`{value}`");
        }
    }
}
