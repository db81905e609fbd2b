//! Why a request got its decision — the workload it was judged as, the policies that applied in Istio's order, and for each rule the first field that did not match; computed only when asked, never on the hot path; pure.
//!
//! [`Snapshot::explain`] walks the same predicates as [`Snapshot::check`], but rule by rule and
//! field by field, and arrives at its own verdict: the golden cases check that it is always the
//! decision's. It allocates freely and shows request values (headers, claims) in its text:
//! it is for the operator's terminal, never for a log line.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use super::authn::{self, Authentication, AuthnContext, JwtRule, Outputs};
use super::data::Data;
use super::decision::{PolicyMatch, Reason};
use super::identity::Identity;
use super::index::PolicyKind;
use super::jwt::JwtError;
use super::path;
use super::policy::{Action, Attributes, Conjunction, Policy, PolicyId, Predicate, RequestPrincipalMatch, Test};
use super::request::{HeaderReading, HttpRequest, Request};
use super::snapshot::Snapshot;
use super::value::Unevaluable;
use super::workload::UnknownWorkload;

/// Why one request got its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The namespace the request was judged in; `None` when no source named it.
    pub namespace: Option<String>,
    /// The workload's labels, as policy selectors read them.
    pub labels: Vec<(String, String)>,
    /// The verdict the explanation arrives at.
    pub reason: Reason,
    /// The enforced policy rule that decided, if one did.
    pub policy: Option<PolicyMatch>,
    /// What decided before any policy was read, or the other reading of the path that did.
    pub notes: Vec<String>,
    /// The policies that select the workload, in the order Istio reads them: DENY, ALLOW,
    /// AUDIT, then dry-run ones; mesh-wide ones first within each.
    pub policies: Vec<PolicyExplanation>,
}

/// One policy that selects the workload, and how each of its rules fared.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyExplanation {
    /// The policy.
    pub policy: Arc<PolicyId>,
    /// Its action.
    pub action: Action,
    /// Whether it is an `istio.io/dry-run` policy.
    pub dry_run: bool,
    /// One outcome per rule, in the policy's order.
    pub rules: Vec<RuleOutcome>,
}

/// How one rule fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOutcome {
    /// Every field and condition held.
    Matched,
    /// The first field or condition that did not hold, and why: `to.operation.paths: …`.
    Missed(String),
}

/// The verified caller and authentication's header changes, or why the token was refused.
type TokenOutcome = Result<(Option<Arc<Identity>>, Outputs), JwtError>;

impl Snapshot {
    /// Explains the decision [`Snapshot::check`] gives this request under the same context,
    /// with no data loaded.
    pub fn explain(&self, request: &Request<'_>, context: &AuthnContext<'_>) -> Explanation {
        self.explain_with_data(request, context, &Data::default())
    }

    /// [`Snapshot::explain`], lookups reading `data`. A lookup that cannot be evaluated is
    /// explained by its source and why, never by a record's contents.
    pub fn explain_with_data(&self, request: &Request<'_>, context: &AuthnContext<'_>, data: &Data) -> Explanation {
        self.explain_with(request, data, |rules, http| {
            let Some(http) = http.filter(|_| !rules.is_empty()) else { return Ok((None, Outputs::default())) };
            let authentication = if authn::is_cors_preflight(http) {
                Authentication::Anonymous
            } else {
                authn::authenticate(rules, http, context)
            };
            let outputs = authn::outputs(rules, &authentication);
            let identity = authentication.caller()?.cloned();
            Ok((identity, outputs))
        })
    }

    /// Explains a request made by `identity`, policies judged alone, as the golden tests drive it.
    #[cfg(any(test, feature = "test-util"))]
    pub fn explain_as(&self, request: &Request<'_>, identity: Option<&Identity>, data: &Data) -> Explanation {
        let identity = identity.map(|identity| Arc::new(identity.clone()));
        self.explain_with(request, data, |_, _| Ok((identity, Outputs::default())))
    }

    fn explain_with(
        &self,
        request: &Request<'_>,
        data: &Data,
        authenticate: impl FnOnce(&[&Arc<JwtRule>], Option<&HttpRequest<'_>>) -> TokenOutcome,
    ) -> Explanation {
        let workload = self.workloads.resolve(request);
        let labels = workload.labels().into_iter().map(|(key, value)| (key.into(), value.into())).collect();
        let mut explanation = Explanation {
            namespace: workload.namespace.map(Into::into),
            labels,
            reason: Reason::NoPolicies,
            policy: None,
            notes: Vec::new(),
            policies: Vec::new(),
        };
        if !workload.is_identified()
            && self.options.unknown_workload == UnknownWorkload::Deny
            && self.policies.has_namespaced()
        {
            let note = "no source names the workload's namespace (the `namespace` context extension, the destination principal, the `workloads` table) and the set has namespace-scoped policies";
            return explanation.decided(Reason::UnknownWorkload, note.into());
        }
        let scope = self.policies.scope(&workload);
        let normalized =
            match request.http.as_ref().map(|http| (http.path, path::normalize(http.path, self.options.path))) {
                Some((raw, Err(error))) => {
                    return explanation.decided(Reason::InvalidPath, format!("path `{raw}`: {error}"));
                }
                Some((_, Ok(normalized))) => Some(normalized),
                None => None,
            };
        let mut rules = Vec::new();
        scope.authn(&workload, |policy| rules.extend(policy.rules.iter()));
        let (identity, mut outputs) = match authenticate(&rules, request.http.as_ref()) {
            Ok(outcome) => outcome,
            Err(error) => {
                let reason = Reason::for_refused_token(error);
                return explanation.decided(reason, format!("the token was refused: {error}"));
            }
        };
        self.sources.strip_user_headers(&mut outputs.headers_to_remove);
        let mut attributes = self.attributes(request, normalized.as_ref(), identity.as_deref(), &outputs, data);
        let mut selected = scope.policies(&workload);
        // Stable: mesh-wide first and name order stay within each kind.
        selected.sort_by_key(|policy| PolicyKind::of(policy));
        explanation.settle(explain_policies(&selected, &attributes));
        if explanation.reason.is_allow() {
            for other_reading in normalized.iter().flat_map(|normalized| &normalized.other_readings) {
                attributes.path = other_reading;
                let under_other = explain_policies(&selected, &attributes);
                if !verdict(&under_other).0.is_allow() {
                    explanation.notes.push(format!(
                        "the path also reads as `{other_reading}` (decoded slashes or `;` parameters dropped) and must be allowed under every reading; under that one:"
                    ));
                    explanation.settle(under_other);
                    break;
                }
            }
        }
        explanation
    }
}

impl Explanation {
    fn decided(mut self, reason: Reason, note: String) -> Self {
        self.reason = reason;
        self.notes.push(note);
        self
    }

    fn settle(&mut self, policies: Vec<PolicyExplanation>) {
        (self.reason, self.policy) = verdict(&policies);
        self.policies = policies;
    }
}

/// Istio's verdict over explained policies: the first matching DENY rule, else the first
/// matching ALLOW rule, else a deny when ALLOW policies apply, else an allow.
fn verdict(policies: &[PolicyExplanation]) -> (Reason, Option<PolicyMatch>) {
    let enforced = |action: Action| policies.iter().filter(move |policy| policy.action == action && !policy.dry_run);
    let first_match = |action: Action| {
        enforced(action).find_map(|policy| {
            let rule = policy.rules.iter().position(|outcome| *outcome == RuleOutcome::Matched)?;
            Some(PolicyMatch { policy: policy.policy.clone(), rule })
        })
    };
    if let Some(matched) = first_match(Action::Deny) {
        (Reason::DeniedByPolicy, Some(matched))
    } else if let Some(matched) = first_match(Action::Allow) {
        (Reason::AllowedByPolicy, Some(matched))
    } else if enforced(Action::Allow).next().is_some() {
        (Reason::NoAllowMatch, None)
    } else {
        (Reason::NoPolicies, None)
    }
}

fn explain_policies(selected: &[&Policy], attributes: &Attributes<'_>) -> Vec<PolicyExplanation> {
    selected
        .iter()
        .map(|policy| PolicyExplanation {
            policy: policy.id.clone(),
            action: policy.action,
            dry_run: policy.dry_run,
            rules: policy
                .rules
                .iter()
                .map(|rule| {
                    let sides = [("from", "source", &rule.from), ("to", "operation", &rule.to)];
                    let missed = sides
                        .into_iter()
                        .find_map(|(side, part, alternatives)| {
                            missed_alternatives(side, part, alternatives, attributes, policy.action)
                        })
                        .or_else(|| {
                            let predicate = first_missed(&rule.when, attributes, policy.action)?;
                            Some(format!("when {}: {}", condition_name(predicate), why(predicate, attributes)))
                        });
                    missed.map_or(RuleOutcome::Matched, RuleOutcome::Missed)
                })
                .collect(),
        })
        .collect()
}

fn first_missed<'p>(all: &'p Conjunction, attributes: &Attributes<'_>, action: Action) -> Option<&'p Predicate> {
    all.0.iter().find(|predicate| !predicate.holds(attributes, action))
}

/// Why no alternative of `from` (or `to`) holds, each alternative's first miss; `None` when one holds.
fn missed_alternatives(
    side: &str,
    part: &str,
    alternatives: &[Conjunction],
    attributes: &Attributes<'_>,
    action: Action,
) -> Option<String> {
    let mut misses = Vec::new();
    for (index, all) in alternatives.iter().enumerate() {
        let predicate = first_missed(all, attributes, action)?;
        let place = if alternatives.len() == 1 { side.to_string() } else { format!("{side}[{index}]") };
        misses.push(format!("{place}.{part}.{}: {}", field_name(predicate), why(predicate, attributes)));
    }
    (!misses.is_empty()).then(|| misses.join("; "))
}

/// A `from.source` or `to.operation` field as the policy names it.
fn field_name(predicate: &Predicate) -> String {
    let name = match &predicate.test {
        Test::SourcePrincipal(_) => "principals",
        Test::SourceNamespace(_) => "namespaces",
        Test::SourceServiceAccount(_) => "serviceAccounts",
        Test::SourceIp(_) => "ipBlocks",
        Test::RemoteIp(_) => "remoteIpBlocks",
        Test::RequestPrincipal(_) => "requestPrincipals",
        Test::Host(_) => "hosts",
        Test::Method(_) => "methods",
        Test::Path(_) => "paths",
        Test::DestinationPort(_) => "ports",
        _ => return condition_name(predicate),
    };
    if predicate.negated {
        let mut chars = name.chars();
        let first = chars.next().map(|first| first.to_ascii_uppercase()).unwrap_or_default();
        format!("not{first}{}", chars.as_str())
    } else {
        name.into()
    }
}

/// A `when` condition as the policy names it: its key, and `notValues` when negated.
fn condition_name(predicate: &Predicate) -> String {
    let key = match &predicate.test {
        Test::SourcePrincipal(_) => "source.principal".into(),
        Test::SourceNamespace(_) => "source.namespace".into(),
        Test::SourceServiceAccount(_) => "source.serviceAccount".into(),
        Test::SourceIp(_) => "source.ip".into(),
        Test::RemoteIp(_) => "remote.ip".into(),
        Test::DestinationIp(_) => "destination.ip".into(),
        Test::DestinationPort(_) => "destination.port".into(),
        Test::Sni(_) => "connection.sni".into(),
        Test::Host(_) => "request.host".into(),
        Test::Method(_) => "request.method".into(),
        Test::Path(_) => "request.path".into(),
        Test::Header { name, .. } => format!("request.headers[{name}]"),
        Test::RequestPrincipal(_) => "request.auth.principal".into(),
        Test::Audience(_) => "request.auth.audiences".into(),
        Test::Presenter(_) => "request.auth.presenter".into(),
        Test::Claim { path, .. } => {
            let brackets: String = path.iter().map(|name| format!("[{name}]")).collect();
            format!("request.auth.claims{brackets}")
        }
        Test::Computed { key, .. } => key.to_string(),
        Test::ValuesFrom { key, .. } if predicate.negated => return format!("{key} (notValuesFrom)"),
        Test::ValuesFrom { key, .. } => return format!("{key} (valuesFrom)"),
    };
    if predicate.negated { format!("{key} (notValues)") } else { key }
}

/// Why a predicate that does not hold does not: what the request has, against what it wants.
fn why(predicate: &Predicate, attributes: &Attributes<'_>) -> String {
    if let Some(evaluated) = predicate.test.evaluate_dynamic(attributes) {
        return why_dynamic(predicate, evaluated);
    }
    if predicate.test.evaluate(attributes, HeaderReading::Whole).is_none() {
        return "the check is for a TCP connection: an HTTP field never matches in an ALLOW rule".into();
    }
    if let (Test::Header { name, .. }, Some(headers)) = (&predicate.test, &attributes.headers)
        && headers.is_ambiguous(name)
    {
        return format!(
            "the `{name}` header's values came joined with commas; an ALLOW rule needs the condition to hold both read whole and split at commas"
        );
    }
    let wanted = wanted(&predicate.test);
    match observed(&predicate.test, attributes) {
        Err(missing) if predicate.negated => format!("{missing}, so nothing is excluded by {wanted}"),
        Err(missing) => missing,
        Ok(values) if predicate.negated => format!("{} is excluded by {wanted}", values.join(", ")),
        Ok(values) => format!("{} matches none of {wanted}", values.join(", ")),
    }
}

/// Why a predicate over value expressions does not hold, without a value it read: computed
/// values may come from a data source's records.
fn why_dynamic(predicate: &Predicate, evaluated: Result<bool, Unevaluable<'_>>) -> String {
    let wanted = wanted(&predicate.test);
    match evaluated {
        Err(reason) => format!("cannot be evaluated: {reason}; an ALLOW rule does not match (a DENY rule would)"),
        Ok(_) if predicate.negated => format!("a value of the key is among {wanted}"),
        Ok(_) => format!("no value of the key is among {wanted}"),
    }
}

/// The patterns a test accepts, as the policy wrote them.
fn wanted(test: &Test) -> String {
    fn join<T: fmt::Display>(items: &[T]) -> String {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
    match test {
        Test::SourcePrincipal(patterns)
        | Test::SourceNamespace(patterns)
        | Test::Sni(patterns)
        | Test::Host(patterns)
        | Test::Method(patterns)
        | Test::Audience(patterns)
        | Test::Presenter(patterns)
        | Test::Header { values: patterns, .. }
        | Test::Claim { values: patterns, .. }
        | Test::Computed { values: patterns, .. } => join(patterns),
        Test::ValuesFrom { from, .. } => format!("the values of {}", join(from)),
        Test::SourceServiceAccount(accounts) => {
            let names: Vec<String> =
                accounts.iter().map(|account| format!("{}/{}", account.namespace, account.name)).collect();
            names.join(", ")
        }
        Test::SourceIp(blocks) | Test::RemoteIp(blocks) | Test::DestinationIp(blocks) => join(blocks),
        Test::DestinationPort(ports) => join(ports),
        Test::Path(patterns) => join(patterns),
        Test::RequestPrincipal(patterns) => {
            let shown: Vec<String> = patterns.iter().map(principal_pattern).collect();
            shown.join(", ")
        }
    }
}

fn principal_pattern(pattern: &RequestPrincipalMatch) -> String {
    use super::matcher::StringMatch::Presence;
    match (&pattern.issuer, &pattern.subject) {
        (Presence, Presence) => "*".into(),
        (issuer, subject) => format!("{issuer}/{subject}"),
    }
}

/// What the request offers the test: its values, or why it has none.
fn observed(test: &Test, attributes: &Attributes<'_>) -> Result<Vec<String>, String> {
    let request = attributes.request;
    let source = || attributes.source.ok_or("the request has no peer principal (no mutual TLS)");
    let address = |address: Option<std::net::IpAddr>, what: &str| {
        address.map(|address| vec![address.to_string()]).ok_or(format!("the request has no {what}"))
    };
    let identity = || attributes.identity.ok_or("the request has no token");
    let claim = |path: &[&str]| {
        let values: Vec<String> = identity()?.claim_values(path).map(Into::into).collect();
        if values.is_empty() {
            Err("the token has no such claim (or no string value in it)".into())
        } else {
            Ok(values)
        }
    };
    let one = |value: &str| Ok(vec![value.to_string()]);
    match test {
        Test::SourcePrincipal(_) => one(source()?.principal),
        Test::SourceNamespace(_) => one(source()?.namespace.ok_or("the peer principal names no namespace")?),
        Test::SourceServiceAccount(_) => {
            let id = source()?;
            match (id.namespace, id.service_account) {
                (Some(namespace), Some(account)) => one(&format!("{namespace}/{account}")),
                _ => Err("the peer principal names no service account".into()),
            }
        }
        Test::SourceIp(_) => address(request.source.address, "source address"),
        Test::RemoteIp(_) => address(attributes.remote_ip, "client address"),
        Test::DestinationIp(_) => address(request.destination.address, "destination address"),
        Test::DestinationPort(_) => request
            .destination
            .port
            .map(|port| vec![port.to_string()])
            .ok_or("the request has no destination port".into()),
        Test::Sni(_) if request.sni.is_empty() => Err("the connection has no SNI".into()),
        Test::Sni(_) => one(request.sni),
        Test::Host(_) => one(request.http.as_ref().map_or("", |http| http.host)),
        Test::Method(_) => one(request.http.as_ref().map_or("", |http| http.method)),
        Test::Path(_) => one(attributes.path),
        Test::Header { name, .. } => {
            let values = RefCell::new(Vec::new());
            if let Some(headers) = &attributes.headers {
                headers.any_value(name, HeaderReading::Whole, |value| {
                    values.borrow_mut().push(value.to_string());
                    false
                });
            }
            let values = values.into_inner();
            if values.is_empty() { Err(format!("the request has no `{name}` header")) } else { Ok(values) }
        }
        Test::RequestPrincipal(_) => {
            let identity = identity()?;
            one(&format!("{}/{}", identity.issuer(), identity.subject()))
        }
        Test::Audience(_) => claim(&["aud"]),
        Test::Presenter(_) => claim(&["azp"]),
        Test::Claim { path, .. } => claim(&path.iter().map(|name| &**name).collect::<Vec<_>>()),
        Test::Computed { .. } | Test::ValuesFrom { .. } => Err("computed values are not shown".into()),
    }
}

fn kind_name(action: Action, dry_run: bool) -> &'static str {
    match (action, dry_run) {
        (Action::Allow, false) => "ALLOW",
        (Action::Deny, false) => "DENY",
        (Action::Audit, _) => "AUDIT",
        (Action::Allow, true) => "ALLOW (dry run)",
        (Action::Deny, true) => "DENY (dry run)",
    }
}

/// The explanation as lines for a terminal: the workload, notes, then each policy and its rules.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
        let labels = if labels.is_empty() { "no labels".to_string() } else { format!("labels {}", labels.join(", ")) };
        match &self.namespace {
            Some(namespace) => writeln!(f, "judged as the workload in namespace `{namespace}` with {labels}")?,
            None => writeln!(f, "judged as a workload no source names (mesh-wide policies only), with {labels}")?,
        }
        let verdict = if self.reason.is_allow() { "allow" } else { "deny" };
        match &self.policy {
            Some(policy) => writeln!(f, "decision: {verdict} ({}) by {policy}", self.reason.as_str())?,
            None => writeln!(f, "decision: {verdict} ({})", self.reason.as_str())?,
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        if self.notes.is_empty() && self.policies.is_empty() {
            writeln!(f, "no policy selects this workload")?;
        }
        for policy in &self.policies {
            writeln!(f, "{} {}", kind_name(policy.action, policy.dry_run), policy.policy)?;
            if policy.rules.is_empty() {
                writeln!(f, "  no rules: matches nothing")?;
            }
            for (index, outcome) in policy.rules.iter().enumerate() {
                match outcome {
                    RuleOutcome::Matched => writeln!(f, "  rule[{index}]: matched")?,
                    RuleOutcome::Missed(why) => writeln!(f, "  rule[{index}]: {why}")?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::NoRemoteKeys;
    use crate::matcher::PathMatch;
    use crate::policy::Rule;
    use crate::request::StrMap;
    use crate::snapshot::EngineOptions;
    use crate::workload::{LabelSelector, WorkloadTable};

    /// Under a mesh-wide ALLOW of `paths: [/public*]`.
    fn explain(request: &Request<'_>) -> Explanation {
        let path = PathMatch::parse("/public*").unwrap_or_else(|error| unreachable!("{error}"));
        let predicate = Predicate { test: Test::Path(Box::new([path])), negated: false };
        let rule = Rule { to: Box::new([Conjunction(Box::new([predicate]))]), ..Rule::default() };
        let policy = Policy {
            id: Arc::new(PolicyId { namespace: "istio-system".into(), name: "public".into() }),
            action: Action::Allow,
            dry_run: false,
            selector: LabelSelector::default(),
            rules: Box::new([rule]),
        };
        let snapshot =
            Snapshot::new(vec![policy], Vec::new(), WorkloadTable::default(), EngineOptions::default(), "istio-system");
        let context = AuthnContext { keys: &NoRemoteKeys, now: 0, clock_skew_secs: 0, max_token_bytes: 8192 };
        snapshot.explain(request, &context)
    }

    #[test]
    fn a_path_allowed_as_sent_but_denied_decoded_is_explained_under_the_reading_that_denies() {
        let http = HttpRequest { method: "GET", path: "/public%2F..%2Fadmin", ..HttpRequest::default() };
        let explanation = explain(&Request { http: Some(http), ..Request::default() });
        assert_eq!(explanation.reason, Reason::NoAllowMatch);
        assert!(explanation.notes[0].starts_with("the path also reads as `/admin`"), "{explanation}");
        let missed = RuleOutcome::Missed("to.operation.paths: /admin matches none of /public*".into());
        assert_eq!(explanation.policies[0].rules, [missed]);
    }

    #[test]
    fn an_http_field_of_an_allow_rule_is_explained_as_never_matching_a_tcp_check() {
        let explanation = explain(&Request { context_extensions: StrMap::default(), ..Request::default() });
        assert_eq!((explanation.reason, explanation.namespace.as_deref()), (Reason::NoAllowMatch, None));
        let why = "to.operation.paths: the check is for a TCP connection: an HTTP field never matches in an ALLOW rule";
        assert_eq!(explanation.policies[0].rules, [RuleOutcome::Missed(why.into())]);
        assert!(explanation.to_string().starts_with("judged as a workload no source names"), "{explanation}");
    }
}
