//! A compiled, immutable policy set (indexed by `index`), and the check in three stages: `plan` (the request read, its token found), the token resolved by the caller, `authorize` (decision out); pure, cannot fail.

use std::net::IpAddr;
use std::sync::Arc;

use super::api_key::{self, ApiKeyLocation, PresentedKey};
use super::authn::{
    self, Authentication, AuthnContext, AuthnPolicy, Credential, Credentials, JwtRule, KeySource, Outputs, RemoteIssuer,
};
use super::data::{Data, Lookup, Shape};
use super::decision::{Challenge, Decision, DryRunOutcome, PolicyMatch, Reason};
use super::identity::{ClaimPaths, Identity};
use super::index::{PolicyIndex, PolicyKind, Scope};
use super::introspection::{self, OpaqueToken};
use super::jwt::JwtError;
use super::path::{self, NormalizedPath, PathOptions};
use super::policy::{Attributes, Policy};
use super::redact::LogRedaction;
use super::request::{HeaderView, Request, SpiffeId};
use super::value::{Expr, Value};
use super::workload::{UnknownWorkload, Workload, WorkloadTable};

/// Options of the engine that come from the server's settings.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// How paths are normalized before they are matched.
    pub path: PathOptions,
    /// How many proxies' entries to skip from the right of `x-forwarded-for` to find the
    /// client address (`remote.ip`); 0 takes the direct peer and never reads the header.
    pub trusted_proxy_hops: usize,
    /// Keep every claim of a verified token (as JSON, for the decision log), not only those
    /// the policy set reads.
    pub keep_claims_json: bool,
    /// What a request whose workload no source names gets.
    pub unknown_workload: UnknownWorkload,
    /// Where requests present API keys; empty when no key files are configured.
    pub api_key_locations: Arc<[ApiKeyLocation]>,
    /// The issuers whose introspection endpoints check opaque bearer tokens, in the order
    /// configured; empty when none is.
    pub introspection_issuers: Arc<[Arc<str>]>,
}

/// What a snapshot knows of the data sources its policies read: their shapes and the
/// user-data headers they feed.
#[derive(Debug, Clone, Default)]
pub struct DataSources {
    /// Each source's name and shape, as lookups expect its table.
    pub shapes: Vec<(Arc<str>, Arc<Shape>)>,
    /// The user-data headers: set on allow from the caller's record, stripped from every request.
    pub user_headers: Vec<UserHeader>,
}

/// A source's user-data header: on allow, the caller's record's precomputed header value.
#[derive(Debug, Clone)]
pub struct UserHeader {
    /// The header's name, lower case.
    pub name: Arc<str>,
    /// The source whose record it carries.
    pub source: Arc<str>,
    /// The source's shape.
    pub shape: Arc<Shape>,
    /// The caller's key in the source: it must yield exactly one value.
    pub caller: Expr,
}

impl DataSources {
    /// Adds every user-data header name to `remove`, once: a client never sends one through.
    pub(super) fn strip_user_headers(&self, remove: &mut Vec<Arc<str>>) {
        for header in &self.user_headers {
            if !remove.iter().any(|name| name.eq_ignore_ascii_case(&header.name)) {
                remove.push(header.name.clone());
            }
        }
    }

    /// The user-data headers of the caller `attributes` name, for an allowed request: each
    /// whose caller expression yields one key whose record is found.
    fn user_headers_of(&self, attributes: &Attributes<'_>) -> Vec<(Arc<str>, String)> {
        let mut set = Vec::new();
        for header in &self.user_headers {
            let (mut key, mut keys) = (None, 0usize);
            let evaluated = header.caller.visit(attributes, &mut |value: Value<'_>| {
                keys += 1;
                key = Some(value.text().into_owned());
            });
            let (Ok(()), 1, Some(key)) = (evaluated, keys, key) else { continue };
            if let Lookup::Found(record, _) = attributes.data.lookup(&header.source, &header.shape, &key)
                && let Some(value) = record.header()
            {
                set.push((header.name.clone(), value.to_string()));
            }
        }
        set
    }
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
    /// The data sources' shapes and user-data headers.
    pub(super) sources: DataSources,
}

impl Snapshot {
    /// Indexes compiled policies. Policies without a namespace or in `root_namespace` apply to
    /// every workload.
    pub fn new(
        policies: Vec<Policy>,
        authn: Vec<AuthnPolicy>,
        workloads: WorkloadTable,
        options: EngineOptions,
        root_namespace: &str,
    ) -> Self {
        Self::with_data_sources(policies, authn, workloads, options, root_namespace, DataSources::default())
    }

    /// [`Snapshot::new`], for policies that read the data `sources` declare.
    pub fn with_data_sources(
        mut policies: Vec<Policy>,
        mut authn: Vec<AuthnPolicy>,
        workloads: WorkloadTable,
        options: EngineOptions,
        root_namespace: &str,
        sources: DataSources,
    ) -> Self {
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        authn.sort_by(|a, b| a.id.cmp(&b.id));
        let rule_claims = authn.iter().flat_map(|policy| policy.rules.iter()).flat_map(|rule| rule.claim_paths());
        let policy_claims = policies.iter().flat_map(Policy::claim_paths);
        let mut header_claims = Vec::new();
        sources.user_headers.iter().for_each(|header| header.caller.claim_paths(&mut header_claims));
        let claims = rule_claims.chain(policy_claims).chain(header_claims).collect::<Vec<_>>();
        let kept = Arc::new(ClaimPaths::new(claims, options.keep_claims_json));
        for policy in &mut authn {
            policy.rules = policy.rules.iter().map(|rule| Arc::new(rule.keeping(&kept))).collect();
        }
        let locations = authn.iter().flat_map(|policy| policy.rules.iter()).flat_map(|rule| rule.locations.iter());
        let log_redaction = LogRedaction::new(locations);
        let policies = PolicyIndex::new(policies, authn, root_namespace);
        Self { policies, kept_claims: kept, workloads, options, log_redaction, sources }
    }

    /// The data sources the set declares: shapes and user-data headers.
    pub fn data_sources(&self) -> &DataSources {
        &self.sources
    }

    /// Every remote issuer of the set's JWT rules, once, with its `jwksUri` if it has one; a
    /// rule without issuer's keys count as one more, under the name its rule files them.
    pub fn remote_issuers(&self) -> Vec<RemoteIssuer> {
        let mut issuers: Vec<RemoteIssuer> = Vec::new();
        for rule in self.policies.all_authn().flat_map(|policy| policy.rules.iter()) {
            if let KeySource::Remote { filed_under, jwks_uri, timeout } = &rule.keys
                && !issuers.iter().any(|known| known.issuer == *filed_under)
            {
                issuers.push(RemoteIssuer {
                    issuer: filed_under.clone(),
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
            if let KeySource::Remote { filed_under, jwks_uri, .. } = &rule.keys {
                match seen.iter().find(|(issuer, _)| *issuer == filed_under) {
                    Some((_, other)) if *other != jwks_uri => {
                        let show = |uri: &Option<Box<str>>| uri.as_deref().unwrap_or("(discovery)").to_string();
                        return Some(format!(
                            "issuer `{filed_under}` has keys at two places: `{}` and `{}`; give every rule of an issuer the same `jwksUri`",
                            show(other),
                            show(jwks_uri)
                        ));
                    }
                    Some(_) => {}
                    None => seen.push((filed_under, jwks_uri)),
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

    /// Decides one request with the keys `context` has now, nothing remembered or fetched:
    /// [`Snapshot::plan`], the token verified, then [`Snapshot::authorize`].
    ///
    /// It cannot fail: a panic inside (a bug) is caught and becomes a deny, `internal_error`.
    pub fn check(&self, request: &Request<'_>, context: &AuthnContext<'_>) -> Decision {
        self.check_with_data(request, context, &Data::default())
    }

    /// [`Snapshot::check`], lookups reading `data`.
    pub fn check_with_data(&self, request: &Request<'_>, context: &AuthnContext<'_>, data: &Data) -> Decision {
        let plan = self.plan(request);
        let resolve = || {
            plan.credentials()
                .map(|credentials| credentials.authenticate_with(|credential| credential.authenticate(context)))
        };
        let Some(resolved) = guarded(resolve) else { return internal_error() };
        self.authorize_with_data(plan, resolved, data)
    }

    /// Decides one request, each token it carries authenticated by `authenticate` when Istio's
    /// requirement asks: the whole check for a caller whose keys and remembered tokens are at hand.
    pub fn check_with<'p>(
        &'p self,
        request: &'p Request<'p>,
        authenticate: impl FnMut(&Credential<'p>) -> Authentication<'p>,
    ) -> Decision {
        let plan = self.plan(request);
        let resolve = || plan.credentials().map(|credentials| credentials.authenticate_with(authenticate));
        let Some(resolved) = guarded(resolve) else { return internal_error() };
        self.authorize(plan, resolved)
    }

    /// The first stage of a check: the request's workload, its normalized path, the JWT rules
    /// that apply and the tokens it carries, found but not verified; or the decision, when one
    /// is reached before any token is read (an unknown workload, an invalid path). A CORS
    /// preflight carries no token to read, whatever it sends: Istio has Envoy bypass it.
    ///
    /// It cannot fail: a panic inside (a bug) is caught and becomes a deny, `internal_error`.
    pub fn plan<'p>(&'p self, request: &'p Request<'p>) -> Plan<'p> {
        guarded(|| self.plan_unguarded(request)).unwrap_or_else(|| Plan(Planned::Decided(internal_error())))
    }

    fn plan_unguarded<'p>(&'p self, request: &'p Request<'p>) -> Plan<'p> {
        let workload = self.workloads.resolve(request);
        let identified = workload.is_identified();
        let decided = |reason| {
            let mut decision = Decision::new(reason, None);
            decision.unidentified_workload = !identified;
            Plan(Planned::Decided(decision))
        };
        // No source names the workload and the set has namespace-scoped policies it would
        // silently escape: denied (under the default setting).
        if !identified && self.options.unknown_workload == UnknownWorkload::Deny && self.policies.has_namespaced() {
            return decided(Reason::UnknownWorkload);
        }
        let scope = self.policies.scope(&workload);
        let mut rules: ApplicableRules<'p> = Vec::new();
        let (normalized, credentials, api_key, opaque) = match &request.http {
            // TCP: no path, no tokens to look for.
            None => (None, None, None, None),
            Some(http) => {
                let Ok(normalized) = path::normalize(http.path, self.options.path) else {
                    return decided(Reason::InvalidPath);
                };
                // The JWT rules of every RequestAuthentication that selects the workload.
                scope.authn(&workload, |policy| rules.extend(policy.rules.iter()));
                let (mut credentials, api_key, opaque) = if authn::is_cors_preflight(http) {
                    (None, None, None)
                } else {
                    let api_key = api_key::find_api_key(&self.options.api_key_locations, http);
                    let opaque = introspection::find_opaque_token(&self.options.introspection_issuers, &rules, http);
                    (authn::find_credentials(&rules, http), api_key, opaque)
                };
                if let Some(opaque) = &opaque {
                    // The opaque token is not a JWT for the rules that found it too.
                    credentials = credentials.and_then(|found| found.without(opaque.token));
                    if credentials.is_some() || api_key.is_some() {
                        let failed = Authentication::Failed { error: JwtError::SeveralCredentials };
                        let mut remove = authn::outputs(&rules, &failed).headers_to_remove;
                        if let Some(api_key) = &api_key {
                            api_key.strip_into(&mut remove);
                        }
                        strip_opaque_token(&mut remove);
                        return Plan(Planned::Decided(refusal(
                            request,
                            &workload,
                            JwtError::SeveralCredentials,
                            remove,
                        )));
                    }
                }
                if let (Some(_), Some(api_key)) = (&credentials, &api_key) {
                    // Never guess which of two credentials speaks for the caller.
                    let failed = Authentication::Failed { error: JwtError::SeveralCredentials };
                    let mut remove = authn::outputs(&rules, &failed).headers_to_remove;
                    api_key.strip_into(&mut remove);
                    return Plan(Planned::Decided(refusal(request, &workload, JwtError::SeveralCredentials, remove)));
                }
                (Some(normalized), credentials, api_key, opaque)
            }
        };
        let judgement = Judgement { request, workload, scope, normalized, rules, credentials, api_key, opaque };
        Plan(Planned::Judge(Box::new(judgement)))
    }

    /// The last stage of a check: the decision for a plan, given what became of its credentials
    /// (`resolved`, `None` when the plan has none), with no data loaded (every lookup fails
    /// closed). Policies apply in Istio's order: DENY, then ALLOW; AUDIT and dry-run policies
    /// are evaluated alongside and never change the verdict.
    ///
    /// It cannot fail: a panic inside (a bug) is caught and becomes a deny, `internal_error`.
    pub fn authorize<'p>(&'p self, plan: Plan<'p>, resolved: Option<Authentication<'p>>) -> Decision {
        self.authorize_with_data(plan, resolved, &Data::default())
    }

    /// [`Snapshot::authorize`], lookups reading `data`. Every decision strips client-sent
    /// copies of the user-data headers; an allow sets the caller's.
    pub fn authorize_with_data<'p>(
        &'p self,
        plan: Plan<'p>,
        resolved: Option<Authentication<'p>>,
        data: &Data,
    ) -> Decision {
        let mut decision = guarded(|| match plan.0 {
            Planned::Decided(decision) => decision,
            Planned::Judge(judgement) => self.judge(*judgement, resolved, data),
        })
        .unwrap_or_else(internal_error);
        self.sources.strip_user_headers(&mut decision.headers_to_remove);
        decision
    }

    fn judge<'p>(&'p self, judgement: Judgement<'p>, resolved: Option<Authentication<'p>>, data: &Data) -> Decision {
        let Judgement { request, workload, scope, normalized, rules, credentials, api_key, opaque } = judgement;
        let authentication = match (credentials.is_some() || api_key.is_some() || opaque.is_some(), resolved) {
            (false, Some(session @ Authentication::Session { .. })) => session,
            (false, _) => Authentication::Anonymous,
            (true, Some(resolved)) => resolved,
            // Credentials nobody resolved: never allowed on doubt.
            (true, None) => Authentication::Failed { error: JwtError::VerificationFails },
        };
        let mut outputs = authn::outputs(&rules, &authentication);
        if let Some(api_key) = &api_key {
            api_key.strip_into(&mut outputs.headers_to_remove);
        }
        if opaque.is_some() {
            strip_opaque_token(&mut outputs.headers_to_remove);
        }
        // Policies never read a client's copy of a user-data header.
        self.sources.strip_user_headers(&mut outputs.headers_to_remove);
        let identity = match authentication.caller() {
            Err(error) => return refusal(request, &workload, error, outputs.headers_to_remove),
            Ok(identity) => identity.cloned(),
        };
        // Policies see the headers as the service will: authentication's outputs applied.
        let attributes = self.attributes(request, normalized.as_ref(), identity.as_deref(), &outputs, data);
        let mut decision = self.evaluate_readings(&workload, scope, attributes.clone(), normalized.as_ref());
        let user_headers = if decision.is_allow() { self.sources.user_headers_of(&attributes) } else { Vec::new() };
        decision.identity = identity;
        decision.unidentified_workload = !workload.is_identified();
        decision.headers_to_remove = outputs.headers_to_remove;
        if decision.is_allow() {
            decision.headers_to_set = outputs.headers_to_set;
            decision.headers_to_set.extend(user_headers);
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

    /// Authorizes a request made by `identity` (`None`: no token), lookups reading `data`, as
    /// the golden tests drive it.
    #[cfg(any(test, feature = "test-util"))]
    pub fn decide(&self, request: &Request<'_>, identity: Option<&Identity>, data: &Data) -> Decision {
        let plan = self.plan(request);
        let Planned::Judge(judgement) = plan.0 else { return self.authorize_with_data(plan, None, data) };
        let Judgement { request, workload, scope, normalized, .. } = *judgement;
        let mut outputs = Outputs::default();
        self.sources.strip_user_headers(&mut outputs.headers_to_remove);
        let attributes = self.attributes(request, normalized.as_ref(), identity, &outputs, data);
        let mut decision = self.evaluate_readings(&workload, scope, attributes.clone(), normalized.as_ref());
        decision.unidentified_workload = !workload.is_identified();
        if decision.is_allow() {
            decision.headers_to_set = self.sources.user_headers_of(&attributes);
        }
        decision.headers_to_remove = outputs.headers_to_remove.clone();
        decision
    }

    /// What policies read of a request: its peers, the client address, the path as matched,
    /// the headers as the service will see them (authentication's `outputs` applied), the
    /// caller, the data lookups read.
    pub fn attributes<'a>(
        &self,
        request: &'a Request<'a>,
        normalized: Option<&'a NormalizedPath<'a>>,
        identity: Option<&'a Identity>,
        outputs: &'a Outputs,
        data: &'a Data,
    ) -> Attributes<'a> {
        Attributes {
            request,
            source: SpiffeId::parse(request.source.principal),
            remote_ip: self.remote_ip(request),
            path: normalized.map_or("", |normalized| &normalized.path),
            headers: request
                .http
                .as_ref()
                .map(|http| HeaderView::after(http, &outputs.headers_to_set, &outputs.headers_to_remove)),
            identity,
            data,
        }
    }

    /// The decision of the policies that select the workload: a path a backend may read
    /// otherwise (encoded slashes, `;` parameters) must be allowed under every reading.
    fn evaluate_readings<'a>(
        &self,
        workload: &Workload<'_>,
        scope: Scope<'_>,
        mut attributes: Attributes<'a>,
        normalized: Option<&'a NormalizedPath<'a>>,
    ) -> Decision {
        // The policies that select the workload, found once for every reading of the path.
        let selected = scope.policies(workload);
        let decision = evaluate(&selected, &attributes);
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

/// A request read for its check, its token found but not verified: what
/// [`Snapshot::authorize`] needs, made by [`Snapshot::plan`].
pub struct Plan<'p>(Planned<'p>);

enum Planned<'p> {
    /// Decided before any token is read: an unknown workload, an invalid path, a bug.
    Decided(Decision),
    Judge(Box<Judgement<'p>>),
}

struct Judgement<'p> {
    request: &'p Request<'p>,
    workload: Workload<'p>,
    scope: Scope<'p>,
    normalized: Option<NormalizedPath<'p>>,
    /// The JWT rules of every RequestAuthentication that selects the workload.
    rules: ApplicableRules<'p>,
    /// The tokens the request carries, if any.
    credentials: Option<Credentials<'p>>,
    /// The API key the request presents, if any (never with tokens: that is refused).
    api_key: Option<PresentedKey<'p>>,
    /// The opaque bearer token the request presents, if any (never with another credential).
    opaque: Option<OpaqueToken<'p>>,
}

impl<'p> Plan<'p> {
    /// The tokens to resolve: to look up, get the keys of, verify.
    pub fn credentials(&self) -> Option<&Credentials<'p>> {
        match &self.0 {
            Planned::Judge(judgement) => judgement.credentials.as_ref(),
            Planned::Decided(_) => None,
        }
    }

    /// The API key to look up in the key table; a request that also carries a token is
    /// refused by the plan itself.
    pub fn api_key(&self) -> Option<&PresentedKey<'p>> {
        match &self.0 {
            Planned::Judge(judgement) => judgement.api_key.as_ref(),
            Planned::Decided(_) => None,
        }
    }

    /// The opaque bearer token to introspect; a request that also carries a JWT or an API key
    /// is refused by the plan itself.
    pub fn opaque_token(&self) -> Option<&OpaqueToken<'p>> {
        match &self.0 {
            Planned::Judge(judgement) => judgement.opaque.as_ref(),
            Planned::Decided(_) => None,
        }
    }
}

/// Adds the header an opaque token comes in to `remove`, once: the token never reaches the
/// service, as a JWT's does not by default.
fn strip_opaque_token(remove: &mut Vec<Arc<str>>) {
    if !remove.iter().any(|name| name.eq_ignore_ascii_case("authorization")) {
        remove.push("authorization".into());
    }
}

/// A refused credential's decision, with the bearer challenge of the request's URL; the headers
/// in `remove` are stripped even so, for a proxy that lets the request pass in a dry run.
fn refusal(request: &Request<'_>, workload: &Workload<'_>, error: JwtError, remove: Vec<Arc<str>>) -> Decision {
    let http = request.http.as_ref();
    let challenge = http.and_then(|http| Challenge::bearer(http.scheme, http.host, http.path));
    let mut decision = Decision::refused_token(error, challenge);
    decision.headers_to_remove = remove;
    decision.unidentified_workload = !workload.is_identified();
    decision
}

/// `f`'s value, or `None` when it panics (a bug): the check fails closed.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

fn internal_error() -> Decision {
    Decision::new(Reason::InternalError, None)
}
