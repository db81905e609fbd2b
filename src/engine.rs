//! The one place a check is decided and accounted for, whichever door it came through: live policy set, the check's three stages (the core's plan, the token resolved here from the cache and the keys, the core's authorize), metrics, decision log, trace, dry run. Never writes a wire format.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::core::authn::{Authentication, AuthnContext, Credential, Credentials, UnverifiedToken};
use crate::core::jwt::{JwtError, KeySet};
use crate::core::snapshot::Plan;
use crate::core::{Decision, Reason, Request, Snapshot};
use crate::data::Store;
use crate::identity::api_keys::ApiKeys;
use crate::identity::introspection::Introspection;
use crate::identity::jwks::KeyStore;
use crate::identity::token_cache::{TokenKey, VerifiedTokenCache};
use crate::revocation::Revocations;
use crate::settings::Settings;
use crate::sso::Sso;
use crate::telemetry::{DecisionLog, DecisionRecord, Door, Metrics, UnidentifiedWorkloadLog};
use crate::traces::{TraceContext, Traces};

/// A compiled policy set and its generation (1 for the first set loaded).
#[derive(Debug)]
struct LivePolicies {
    snapshot: Snapshot,
    generation: u64,
}

/// What a door read from the wire.
#[derive(Debug, Clone, Copy)]
pub enum Received<'r, 'a> {
    /// A request the core can judge.
    Judgeable(&'r Request<'a>),
    /// A request the core cannot judge, denied as malformed; what could be read of it (if
    /// anything) goes to the decision log. The door logs why.
    Malformed(Option<&'r Request<'a>>),
}

/// The engine's answer to one check, for the door to write in its wire form.
#[derive(Debug)]
pub struct Outcome {
    /// What the policies decided.
    pub decision: Decision,
    /// Whether the answer is an allow: the decision's, or always under the global dry run.
    pub allow: bool,
}

/// Everything a check needs beside the request: the live policy set, keys, the token cache,
/// and where decisions are counted, logged and traced.
#[derive(Debug)]
pub struct Engine {
    policies: ArcSwap<LivePolicies>,
    metrics: Arc<Metrics>,
    keys: Arc<KeyStore>,
    token_cache: Arc<VerifiedTokenCache>,
    decision_log: DecisionLog,
    unidentified_workloads: UnidentifiedWorkloadLog,
    traces: Traces,
    settings: Settings,
    /// Browser single sign-on, when configured.
    sso: Option<Arc<Sso>>,
    /// API keys of bot accounts, when key files are configured.
    api_keys: Option<Arc<ApiKeys>>,
    /// Introspection providers for opaque tokens, when configured.
    introspection: Option<Arc<Introspection>>,
    /// The revocation list every check consults, when configured.
    revocations: Option<Arc<Revocations>>,
    /// The data sources' live tables that lookups read (empty until a feed loads one).
    data: Arc<Store>,
}

impl Engine {
    /// An engine deciding with `snapshot` (generation 1).
    pub fn new(
        snapshot: Snapshot,
        settings: Settings,
        metrics: Arc<Metrics>,
        keys: Arc<KeyStore>,
        token_cache: Arc<VerifiedTokenCache>,
    ) -> Self {
        Self {
            policies: ArcSwap::from_pointee(LivePolicies { snapshot, generation: 1 }),
            decision_log: DecisionLog::new(&settings, Arc::clone(&metrics)),
            metrics,
            keys,
            token_cache,
            unidentified_workloads: UnidentifiedWorkloadLog::default(),
            traces: Traces::from_environment(),
            settings,
            sso: None,
            api_keys: None,
            introspection: None,
            revocations: None,
            data: Arc::default(),
        }
    }

    /// The same engine, its lookups reading the tables of `data`.
    pub fn with_data(self, data: Arc<Store>) -> Self {
        Self { data, ..self }
    }

    /// The data sources' live tables.
    pub fn data(&self) -> &Arc<Store> {
        &self.data
    }

    /// The same engine, refusing what `revocations` names, when given.
    pub fn with_revocations(self, revocations: Option<Arc<Revocations>>) -> Self {
        Self { revocations, ..self }
    }

    /// The revocation list, when configured.
    pub fn revocations(&self) -> Option<&Arc<Revocations>> {
        self.revocations.as_ref()
    }

    /// The same engine, introspecting opaque bearer tokens with `introspection`, when given.
    pub fn with_introspection(self, introspection: Option<Arc<Introspection>>) -> Self {
        Self { introspection, ..self }
    }

    /// The same engine, looking up the API keys requests present in `api_keys`, when given.
    pub fn with_api_keys(self, api_keys: Option<Arc<ApiKeys>>) -> Self {
        Self { api_keys, ..self }
    }

    /// The API keys of bot accounts, when key files are configured.
    pub fn api_keys(&self) -> Option<&Arc<ApiKeys>> {
        self.api_keys.as_ref()
    }

    /// The same engine, offering browser logins with `sso`.
    pub fn with_sso(self, sso: Arc<Sso>) -> Self {
        Self { sso: Some(sso), ..self }
    }

    /// Browser single sign-on, when configured.
    pub fn sso(&self) -> Option<&Arc<Sso>> {
        self.sso.as_ref()
    }

    /// Decides one check and accounts for it: metrics, the unidentified-workload record, the
    /// decision log (redacted as the live set says), the trace. The live set is loaded once.
    pub async fn check(&self, door: Door, received: Received<'_, '_>) -> Outcome {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let live = self.policies.load();
        let (decision, request) = match received {
            Received::Judgeable(request) => (self.decide(&live.snapshot, request).await, Some(request)),
            Received::Malformed(request) => (Decision::new(Reason::MalformedRequest, None), request),
        };
        let elapsed = started.elapsed();
        self.metrics.record_check(door, &decision, elapsed);
        if let Received::Judgeable(request) = received {
            self.record_unidentified_workload(door, request, &decision);
        }
        let http = request.and_then(|request| request.http.as_ref());
        let (method, host, path) = http.map_or(("", "", ""), |http| (http.method, http.host, http.path));
        let header = |name: &str| http.and_then(|http| http.header(name));
        let request_id = header("x-request-id").unwrap_or_default();
        let request_id = match (&self.api_keys, http) {
            (Some(api_keys), Some(http)) => api_keys.redacted(http, request_id),
            _ => std::borrow::Cow::Borrowed(request_id),
        };
        let record = DecisionRecord {
            door,
            request_id: &request_id,
            method,
            host,
            path,
            decision: &decision,
            elapsed,
            redaction: live.snapshot.log_redaction(),
        };
        self.decision_log.record(&record);
        if self.traces.is_on() {
            let context = TraceContext { traceparent: header("traceparent"), tracestate: header("tracestate") };
            self.traces.record_check(door, started_at, context, method, &decision);
        }
        let allow = decision.is_allow() || self.settings.dry_run;
        Outcome { decision, allow }
    }

    /// Decides a request in three stages: the core plans it (workload, path, rules, the tokens
    /// found), its tokens are resolved here (remembered, or verified with their issuer's keys,
    /// fetched first when missing), the core authorizes it. The clock is read once.
    async fn decide(&self, snapshot: &Snapshot, request: &Request<'_>) -> Decision {
        let _in_flight = self.metrics.check_in_flight();
        let context = self.settings.authn_context(&*self.keys);
        let plan = snapshot.plan(request);
        let sso = self.sso.as_deref().zip(request.http.as_ref());
        let mut session = None;
        // An API key, looked up in the key table (`Some(None)`: the lookup panicked, a bug).
        let api_key = plan.api_key().map(|key| {
            let unknown = || Authentication::Failed { error: JwtError::ApiKeyUnknown };
            let kept = snapshot.kept_claims();
            guarded(|| {
                self.api_keys
                    .as_ref()
                    .map_or_else(unknown, |keys| keys.counted(keys.table().authenticate(key, kept, context.now)))
            })
        });
        let mut decision = match plan.credentials() {
            Some(credentials) => match self.resolve(credentials, &context).await {
                Some(authentication) => {
                    let authentication = self.still_active(authentication, context.now).await;
                    self.authorize(snapshot, plan, Some(authentication))
                }
                None => Decision::new(Reason::InternalError, None),
            },
            None if api_key.is_some() => match api_key.flatten() {
                Some(authentication) => self.authorize(snapshot, plan, Some(authentication)),
                None => Decision::new(Reason::InternalError, None),
            },
            None if plan.opaque_token().is_some() => {
                let authentication = match (plan.opaque_token(), &self.introspection) {
                    (Some(token), Some(introspection)) => self.unless_revoked(
                        introspection.authenticate(token, snapshot.kept_claims(), context.now).await,
                        context.now,
                    ),
                    _ => Authentication::Failed { error: JwtError::IntrospectionFailed },
                };
                self.authorize(snapshot, plan, Some(authentication))
            }
            // No token: a browser session, when the request carries one.
            None => {
                let found = match sso {
                    Some((sso, http)) => sso.session_identity(http, snapshot.kept_claims()).await,
                    None => None,
                };
                // A revoked session is no session: its browser is asked to log in again.
                let found = found.filter(|(identity, _)| {
                    !self.revocations.as_ref().is_some_and(|list| list.revokes_session(identity, context.now))
                });
                let authentication = found.map(|(identity, claims)| {
                    session = Some(claims);
                    Authentication::Session { identity }
                });
                self.authorize(snapshot, plan, authentication)
            }
        };
        if let Some((sso, http)) = sso {
            sso.complete(&mut decision, http, session.as_deref());
        }
        if decision.reason == Reason::InternalError {
            tracing::error!("Check panicked; denied the request");
        }
        decision
    }

    /// The core's last stage, lookups reading the data current now.
    fn authorize<'p>(&self, snapshot: &'p Snapshot, plan: Plan<'p>, resolved: Option<Authentication<'p>>) -> Decision {
        snapshot.authorize_with_data(plan, resolved, &self.data.current())
    }

    /// A request's tokens authenticated as Istio's requirement asks, each token verified in turn
    /// (see [`Credentials::resolution`]) until a rule is satisfied or every one has refused. `None`
    /// when a step panicked (a bug): the check fails closed.
    async fn resolve<'p>(
        &self,
        credentials: &Credentials<'p>,
        context: &AuthnContext<'_>,
    ) -> Option<Authentication<'p>> {
        let mut resolution = credentials.resolution();
        while let Some(credential) = resolution.pending() {
            let outcome = self.authenticate(credential, context).await?;
            resolution.record(self.unless_revoked(outcome, context.now));
        }
        Some(resolution.finish())
    }

    /// A verified JWT as it stands once its issuer's introspection provider, when that one
    /// introspects JWTs (`introspect_jwts`), confirmed it: refused when the provider says the
    /// token is no longer active (a session ended early) or could not be asked.
    async fn still_active<'p>(&self, authentication: Authentication<'p>, now: u64) -> Authentication<'p> {
        let (Some(introspection), Authentication::Verified { identity, token, .. }) =
            (&self.introspection, &authentication)
        else {
            return authentication;
        };
        match introspection.confirm_jwt(token, identity, now).await {
            Ok(()) => authentication,
            Err(error) => Authentication::Failed { error },
        }
    }

    /// Introspection providers, when configured.
    pub fn introspection(&self) -> Option<&Arc<Introspection>> {
        self.introspection.as_ref()
    }

    /// A credential authenticated: the identity (or the refusal) the token cache remembers for
    /// it when that still holds, else the token verified with its issuer's keys and remembered. `None`
    /// when a step panicked (a bug).
    async fn authenticate<'p>(
        &self,
        credential: &Credential<'p>,
        context: &AuthnContext<'_>,
    ) -> Option<Authentication<'p>> {
        let key = TokenKey::new(credential.token());
        if let Some(recalled) = guarded(|| self.token_cache.recall(&key, credential, context))? {
            return Some(recalled);
        }
        let token = match guarded(|| self.token_cache.read(&key, credential, context.max_token_bytes))? {
            Ok(token) => token,
            Err(refused) => return Some(refused),
        };
        let keys = self.keys_for(&token, context).await;
        guarded(|| self.token_cache.verify(&key, &token, keys.as_deref(), context))
    }

    /// `authentication`, or its refusal as revoked when the revocation list names its token
    /// (a remembered identity too: the list is consulted on every check).
    fn unless_revoked<'p>(&self, authentication: Authentication<'p>, now: u64) -> Authentication<'p> {
        match &self.revocations {
            Some(revocations) => revocations.screen(authentication, now),
            None => authentication,
        }
    }

    /// The keys that verify `token`: its rule's inline set, or its issuer's fetched keys. When
    /// the issuer has none yet, or none under the token's `kid` and `alg` (the IdP may have
    /// rotated), they are refetched first (single-flight, rate-limited, waited for at most
    /// `jwks_refetch_wait_ms`).
    async fn keys_for(&self, token: &UnverifiedToken<'_>, context: &AuthnContext<'_>) -> Option<Arc<KeySet>> {
        let keys = token.key_set(context.keys);
        if !token.has_fetched_keys() || keys.as_deref().is_some_and(|keys| token.has_key_in(keys)) {
            return keys;
        }
        let wait = Duration::from_millis(self.settings.jwks_refetch_wait_ms);
        let refetch = async {
            match &keys {
                Some(_) => self.keys.refetch(token.keys_name()).await,
                None => self.keys.refetch_missing().await,
            }
        };
        if tokio::time::timeout(wait, refetch).await.unwrap_or(false) { token.key_set(context.keys) } else { keys }
    }

    /// Counts, and logs at a bounded rate, a check whose workload no source named, whatever
    /// its verdict.
    fn record_unidentified_workload(&self, door: Door, request: &Request<'_>, decision: &Decision) {
        if !decision.unidentified_workload {
            return;
        }
        self.metrics.record_unidentified_workload(door);
        let host = request.http.as_ref().map_or("", |http| http.host);
        self.unidentified_workloads.record(door, host, !request.destination.principal.is_empty(), decision);
    }

    /// Makes `snapshot` the live policy set, for the checks that start from now on, and
    /// returns its generation. The caller (reload) runs one swap at a time.
    pub fn swap(&self, snapshot: Snapshot) -> u64 {
        let generation = self.policies.load().generation + 1;
        self.policies.store(Arc::new(LivePolicies { snapshot, generation }));
        generation
    }

    /// The metrics every check is counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The issuers' key store.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// The span exporter.
    pub fn traces(&self) -> &Traces {
        &self.traces
    }

    /// The settings the server started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// `f`'s value, or `None` when it panics (a bug).
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_policy_text;
    use crate::core::{HttpRequest, Peer, StrMap};

    /// `policies` (YAML) compiled under `settings`.
    fn snapshot(policies: &str, settings: &Settings) -> Snapshot {
        let loaded = load_policy_text("engine.yaml", policies).expect("policies compile");
        let workloads = settings.workload_table().expect("no workload table");
        Snapshot::new(loaded.policies, loaded.authn, workloads, settings.engine_options(), &settings.root_namespace)
    }

    /// An engine over `policies` (YAML) with the default settings, dry run as given.
    fn engine(policies: &str, dry_run: bool) -> Engine {
        let settings = Settings { dry_run, ..Settings::default() };
        let snapshot = snapshot(policies, &settings);
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(VerifiedTokenCache::new(settings.token_cache_entries, metrics.clone()));
        let keys = KeyStore::new(settings.fetch_limits(), metrics.clone(), cache.clone()).expect("key store");
        Engine::new(snapshot, settings, metrics, Arc::new(keys), cache)
    }

    const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: jobs}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
";

    fn request(path: &str) -> Request<'_> {
        Request {
            source: Peer::default(),
            destination: Peer::default(),
            http: Some(HttpRequest { method: "GET", path, ..HttpRequest::default() }),
            sni: "",
            context_extensions: StrMap::from_entries(vec![("namespace", "jobs")]),
        }
    }

    #[tokio::test]
    async fn a_request_the_core_cannot_judge_is_denied_as_malformed_and_counted_for_its_door() {
        let engine = engine(DENY_ADMIN, false);
        let outcome = engine.check(Door::Http, Received::Malformed(Some(&request("/jobs")))).await;
        assert_eq!(outcome.decision.reason, Reason::MalformedRequest);
        assert!(!outcome.allow);
        let metrics = engine.metrics().encode();
        assert!(
            metrics.contains(r#"door="http",decision="deny",reason="malformed_request""#),
            "the check is counted: {metrics}"
        );
    }

    #[tokio::test]
    async fn the_global_dry_run_answers_allow_for_a_deny_and_keeps_the_deny_decision() {
        for (dry_run, allow) in [(false, false), (true, true)] {
            let engine = engine(DENY_ADMIN, dry_run);
            let outcome = engine.check(Door::Grpc, Received::Judgeable(&request("/admin"))).await;
            assert_eq!(outcome.decision.reason, Reason::DeniedByPolicy, "dry run {dry_run}");
            assert_eq!(outcome.allow, allow, "dry run {dry_run}");
        }
    }

    #[tokio::test]
    async fn a_swapped_policy_set_decides_the_next_check_under_the_next_generation() {
        let engine = engine("", false);
        let before = engine.check(Door::Grpc, Received::Judgeable(&request("/admin"))).await;
        assert!(before.allow, "no policy: allowed");
        assert_eq!(engine.swap(snapshot(DENY_ADMIN, engine.settings())), 2);
        let after = engine.check(Door::Grpc, Received::Judgeable(&request("/admin"))).await;
        assert_eq!(after.decision.reason, Reason::DeniedByPolicy);
    }
}
