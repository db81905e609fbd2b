//! A compiled, immutable policy set (indexed by `index`), and `check`: request in, decision out; pure, cannot fail.

use std::net::IpAddr;
use std::sync::Arc;

use super::authn::{self, Authentication, AuthnContext, AuthnPolicy, JwtRule, KeySource, Outputs, RemoteIssuer};
use super::decision::{Decision, DryRunOutcome, PolicyMatch, Reason};
use super::identity::{ClaimPaths, Identity};
use super::index::{PolicyIndex, PolicyKind, Scope};
use super::jwt::JwtError;
use super::path::{self, NormalizedPath, PathOptions};
use super::policy::{Attributes, Policy};
use super::redact::LogRedaction;
use super::request::{HeaderView, HttpRequest, Request, SpiffeId};
use super::workload::{UnknownWorkload, Workload, WorkloadTable};

/// Options of the engine that come from the server's settings.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub path: PathOptions,
    /// How many proxies' entries to skip from the right of `x-forwarded-for` to find the
    /// client address (`remote.ip`); 0 takes the direct peer and never reads the header.
    pub trusted_proxy_hops: usize,
    /// Keep every claim of a verified token (as JSON, for the decision log), not only those
    /// the policy set reads.
    pub keep_claims_json: bool,
    /// What a request whose workload no source names gets.
    pub unknown_workload: UnknownWorkload,
}

/// The JWT rules that apply to one request's workload.
pub type ApplicableRules<'s> = Vec<&'s Arc<JwtRule>>;

/// Everything a check needs, built whole and swapped in at once.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(super) policies: PolicyIndex,
    /// The claims verified identities keep: every claim the set's policies and rules read.
    kept_claims: Arc<ClaimPaths>,
    pub(super) workloads: WorkloadTable,
    pub(super) options: EngineOptions,
    /// What of a request its rules make secret in logs and traces.
    log_redaction: LogRedaction,
}

impl Snapshot {
    /// Indexes compiled policies. Policies without a namespace or in `root_namespace` apply to
    /// every workload.
    pub fn new(
        mut policies: Vec<Policy>,
        mut authn: Vec<AuthnPolicy>,
        workloads: WorkloadTable,
        options: EngineOptions,
        root_namespace: &str,
    ) -> Self {
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        authn.sort_by(|a, b| a.id.cmp(&b.id));
        let rule_claims = authn.iter().flat_map(|policy| policy.rules.iter()).flat_map(|rule| rule.claim_paths());
        let policy_claims = policies.iter().flat_map(Policy::claim_paths);
        let kept =
            Arc::new(ClaimPaths::new(rule_claims.chain(policy_claims).collect::<Vec<_>>(), options.keep_claims_json));
        for policy in &mut authn {
            policy.rules = policy.rules.iter().map(|rule| Arc::new(rule.keeping(&kept))).collect();
        }
        let locations = authn.iter().flat_map(|policy| policy.rules.iter()).flat_map(|rule| rule.locations.iter());
        let log_redaction = LogRedaction::new(locations);
        let policies = PolicyIndex::new(policies, authn, root_namespace);
        Self { policies, kept_claims: kept, workloads, options, log_redaction }
    }

    /// Every remote issuer of the set's JWT rules, once, with its `jwksUri` if it has one.
    pub fn remote_issuers(&self) -> Vec<RemoteIssuer> {
        let mut issuers: Vec<RemoteIssuer> = Vec::new();
        for rule in self.policies.all_authn().flat_map(|policy| policy.rules.iter()) {
            if let KeySource::Remote { jwks_uri, timeout } = &rule.keys
                && !issuers.iter().any(|known| known.issuer == rule.issuer)
            {
                issuers.push(RemoteIssuer {
                    issuer: rule.issuer.clone(),
                    jwks_uri: jwks_uri.clone(),
                    timeout: *timeout,
                });
            }
        }
        issuers
    }

    /// A problem when one issuer's keys are fetched from two places (two `jwksUri`, or one and
    /// discovery): fetched keys are kept per issuer, so the set must agree on where they are.
    pub fn conflicting_key_sources(&self) -> Option<String> {
        let mut seen: Vec<(&Arc<str>, &Option<Box<str>>)> = Vec::new();
        for rule in self.policies.all_authn().flat_map(|policy| policy.rules.iter()) {
            if let KeySource::Remote { jwks_uri, .. } = &rule.keys {
                match seen.iter().find(|(issuer, _)| **issuer == rule.issuer) {
                    Some((_, other)) if *other != jwks_uri => {
                        let show = |uri: &Option<Box<str>>| uri.as_deref().unwrap_or("(discovery)").to_string();
                        return Some(format!(
                            "issuer `{}` has keys at two places: `{}` and `{}`; give every rule of an issuer the same `jwksUri`",
                            rule.issuer,
                            show(other),
                            show(jwks_uri)
                        ));
                    }
                    Some(_) => {}
                    None => seen.push((&rule.issuer, jwks_uri)),
                }
            }
        }
        None
    }

    /// How many AuthorizationPolicies the set holds.
    pub fn policy_count(&self) -> usize {
        self.policies.policy_count()
    }

    /// How many RequestAuthentications the set holds.
    pub fn authn_count(&self) -> usize {
        self.policies.all_authn().count()
    }

    /// Decides one request: its path is normalized, its token (if any) verified, then
    /// policies apply in Istio's order: DENY, then ALLOW; AUDIT and dry-run policies are
    /// evaluated alongside and never change the verdict.
    ///
    /// It cannot fail: a panic inside (a bug) is caught and becomes a deny, `internal_error`.
    pub fn check(&self, request: &Request<'_>, context: &AuthnContext<'_>) -> Decision {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check_unguarded(request, context)))
            .unwrap_or_else(|_| Decision::new(Reason::InternalError, None))
    }

    fn check_unguarded(&self, request: &Request<'_>, context: &AuthnContext<'_>) -> Decision {
        let workload = self.workloads.resolve(request);
        self.marking_unidentified(&workload, || self.check_workload(request, &workload, context))
    }

    /// The decision `judge` gives, unless no source names the workload and the set has
    /// namespace-scoped policies it would silently escape: then denied, `unknown_workload`
    /// (under the default setting). Either way the decision says whether the workload was named.
    fn marking_unidentified(&self, workload: &Workload<'_>, judge: impl FnOnce() -> Decision) -> Decision {
        let identified = workload.is_identified();
        let mut decision = if !identified
            && self.options.unknown_workload == UnknownWorkload::Deny
            && self.policies.has_namespaced()
        {
            Decision::new(Reason::UnknownWorkload, None)
        } else {
            judge()
        };
        decision.unidentified_workload = !identified;
        decision
    }

    fn check_workload(&self, request: &Request<'_>, workload: &Workload<'_>, context: &AuthnContext<'_>) -> Decision {
        let scope = self.policies.scope(workload);
        let Some(http) = &request.http else {
            // TCP: no tokens to look for.
            return self.authorize(request, workload, scope, None, None, &Outputs::default());
        };
        let normalized = match path::normalize(http.path, self.options.path) {
            Ok(normalized) => normalized,
            Err(_) => return Decision::new(Reason::InvalidPath, None),
        };
        // The JWT rules of every RequestAuthentication that selects the workload.
        let mut rules: ApplicableRules<'_> = Vec::new();
        scope.authn(workload, |policy| rules.extend(policy.rules.iter()));
        let authentication =
            if rules.is_empty() { Authentication::Anonymous } else { authn::authenticate(&rules, http, context) };
        let outputs = authn::outputs(&rules, &authentication);
        let identity = match &authentication {
            Authentication::Failed { error, stale_issuer } => {
                let mut decision = denied_token(http, *error, stale_issuer.clone());
                // Stripped even so, for a proxy that lets the request pass in a dry run.
                decision.headers_to_remove = outputs.headers_to_remove;
                return decision;
            }
            Authentication::Anonymous => None,
            Authentication::Verified { identity, .. } => Some(identity.clone()),
        };
        // Policies see the headers as the service will: authentication's outputs applied.
        let mut decision = self.authorize(request, workload, scope, Some(normalized), identity.as_deref(), &outputs);
        decision.identity = identity;
        decision.headers_to_remove = outputs.headers_to_remove;
        if decision.is_allow() {
            decision.headers_to_set = outputs.headers_to_set;
            decision.query_parameters_to_remove = outputs.query_parameters_to_remove;
        }
        decision
    }

    /// What of a request must not reach a log line or a trace under this set.
    pub fn log_redaction(&self) -> &LogRedaction {
        &self.log_redaction
    }

    /// The claims verified identities keep.
    pub fn kept_claims(&self) -> &Arc<ClaimPaths> {
        &self.kept_claims
    }

    /// Authorizes a request made by `identity` (`None`: no token), as the golden tests drive it.
    #[cfg(any(test, feature = "test-util"))]
    pub fn decide(&self, request: &Request<'_>, identity: Option<&Identity>) -> Decision {
        let workload = self.workloads.resolve(request);
        self.marking_unidentified(&workload, || {
            let normalized = match request.http.as_ref().map(|http| path::normalize(http.path, self.options.path)) {
                Some(Err(_)) => return Decision::new(Reason::InvalidPath, None),
                Some(Ok(normalized)) => Some(normalized),
                None => None,
            };
            self.authorize(
                request,
                &workload,
                self.policies.scope(&workload),
                normalized,
                identity,
                &Outputs::default(),
            )
        })
    }

    fn authorize(
        &self,
        request: &Request<'_>,
        workload: &Workload<'_>,
        scope: Scope<'_>,
        normalized: Option<NormalizedPath<'_>>,
        identity: Option<&Identity>,
        outputs: &Outputs,
    ) -> Decision {
        let mut attributes = Attributes {
            request,
            source: SpiffeId::parse(request.source.principal),
            remote_ip: self.remote_ip(request),
            path: normalized.as_ref().map_or("", |normalized| &normalized.path),
            headers: request
                .http
                .as_ref()
                .map(|http| HeaderView::after(http, &outputs.headers_to_set, &outputs.headers_to_remove)),
            identity,
        };
        // The policies that select the workload, found once for every reading of the path.
        let selected = scope.policies(workload);
        let decision = evaluate(&selected, &attributes);
        // A path a backend may read otherwise (encoded slashes, `;` parameters) must be
        // allowed under every reading.
        if decision.is_allow() {
            for other_reading in normalized.iter().flat_map(|normalized| &normalized.other_readings) {
                attributes.path = other_reading;
                let other = evaluate(&selected, &attributes);
                if !other.is_allow() {
                    return other;
                }
            }
        }
        decision
    }

    /// The client address: the direct peer, or with trusted proxies the entry of
    /// `x-forwarded-for` that many hops from its right end.
    pub(super) fn remote_ip(&self, request: &Request<'_>) -> Option<IpAddr> {
        let hops = self.options.trusted_proxy_hops;
        if hops == 0 {
            return request.source.address;
        }
        // A repeated `x-forwarded-for` is one chain, its entries in the order sent.
        let forwarded = request.http.as_ref().map(|http| http.header_values("x-forwarded-for"));
        forwarded
            .and_then(|chain| chain.rev().flat_map(|entries| entries.rsplit(',')).nth(hops - 1))
            .and_then(|entry| entry.trim().parse().ok())
            .or(request.source.address)
    }
}

/// Istio's order over the policies that select the workload (mesh-wide ones first, each kind in
/// name order): DENY, then ALLOW; AUDIT and dry-run policies alongside, never changing the verdict.
fn evaluate(selected: &[&Policy], attributes: &Attributes<'_>) -> Decision {
    let applicable = |kind: PolicyKind| selected.iter().filter(move |policy| PolicyKind::of(policy) == kind);
    let first_match = |kind: PolicyKind| {
        applicable(kind).find_map(|policy| {
            policy.first_matching_rule(attributes).map(|rule| PolicyMatch { policy: policy.id.clone(), rule })
        })
    };

    let mut decision = if let Some(matched) = first_match(PolicyKind::Deny) {
        Decision::new(Reason::DeniedByPolicy, Some(matched))
    } else if let Some(matched) = first_match(PolicyKind::Allow) {
        Decision::new(Reason::AllowedByPolicy, Some(matched))
    } else if applicable(PolicyKind::Allow).next().is_some() {
        Decision::new(Reason::NoAllowMatch, None)
    } else {
        Decision::new(Reason::NoPolicies, None)
    };
    decision.audit = first_match(PolicyKind::Audit);
    decision.dry_run = if let Some(matched) = first_match(PolicyKind::DryRunDeny) {
        Some(DryRunOutcome { would_allow: false, policy: Some(matched) })
    } else if applicable(PolicyKind::DryRunAllow).next().is_some() {
        let matched = first_match(PolicyKind::DryRunAllow);
        Some(DryRunOutcome { would_allow: matched.is_some(), policy: matched })
    } else {
        None
    };
    decision
}

/// A refused token: 401, or 403 for an audience, with Envoy's body and, on both, Envoy's
/// `www-authenticate` (its jwt_authn filter sets it for every refusal but a missing token).
fn denied_token(http: &HttpRequest<'_>, error: JwtError, stale_issuer: Option<Arc<str>>) -> Decision {
    let reason = if error == JwtError::AudienceNotAllowed { Reason::AudienceNotAllowed } else { Reason::InvalidToken };
    let mut decision = Decision::new(reason, None);
    decision.jwt_error = Some(error);
    decision.stale_issuer = stale_issuer;
    let scheme = if http.scheme.is_empty() { "http" } else { http.scheme };
    let path = http.path.split(['?', '#']).next().unwrap_or_default();
    let realm = format!("Bearer realm=\"{scheme}://{}{path}\", error=\"invalid_token\"", http.host);
    if realm.bytes().all(|byte| byte >= 0x20 && byte != 0x7f) {
        decision.response_headers.push((Arc::from("www-authenticate"), realm));
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audience_refusal_carries_the_same_bearer_challenge_as_a_bad_token() {
        let http =
            HttpRequest { scheme: "https", host: "jobs.example", path: "/api/jobs?page=2", ..HttpRequest::default() };
        let challenge = r#"Bearer realm="https://jobs.example/api/jobs", error="invalid_token""#;
        for (error, reason) in
            [(JwtError::AudienceNotAllowed, Reason::AudienceNotAllowed), (JwtError::Expired, Reason::InvalidToken)]
        {
            let decision = denied_token(&http, error, None);
            assert_eq!(decision.reason, reason, "{error:?}");
            let headers: Vec<(&str, &str)> =
                decision.response_headers.iter().map(|(name, value)| (&**name, value.as_str())).collect();
            assert_eq!(headers, [("www-authenticate", challenge)], "{error:?}");
        }
    }
}
