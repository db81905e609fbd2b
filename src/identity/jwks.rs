//! JWKS for remote issuers: OIDC discovery, fetch at start-up, background refresh, prompt single-flight refetch on an unknown kid, size and time limits; the last good keys stay; never verifies a token (the core does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::core::authn::{KeyLookup, RemoteIssuer};
use crate::core::jwt::KeySet;
use crate::identity::token_cache::VerifiedTokenCache;
use crate::outbound::{Outbound, OutboundError, OutboundLimits, redact_url};
use crate::settings::FetchLimits;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// The longest wait between attempts while an issuer has no keys.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a fetch failed; logged and named by `/readyz`, never shown to clients. URLs in it are
/// redacted ([`redact_url`]).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed, or its answer was no document.
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// The document is not a usable key set or discovery document.
    #[error("`{url}`: {message}")]
    Document {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The discovery document is for another issuer.
    #[error(
        "`{url}`: the discovery document is for issuer {found:?}, not this one; refused (OpenID Connect Discovery 1.0 section 4.3)"
    )]
    IssuerMismatch {
        /// The discovery URL, redacted.
        url: String,
        /// The issuer the document names.
        found: String,
    },
}

impl FetchError {
    /// The `result` label of `portcullis_jwks_fetches_total` for this failure.
    fn metric_result(&self) -> &'static str {
        match self {
            Self::IssuerMismatch { .. } => "issuer_mismatch",
            _ => "error",
        }
    }
}

#[derive(Debug)]
struct Issuer {
    jwks_uri: Option<Box<str>>,
    /// The rule's own fetch bound, when it sets one.
    timeout: Option<Duration>,
    keys: ArcSwapOption<KeySet>,
    /// Held while fetching, so that concurrent fetches (start-up, refresh, refetch) share one.
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// When the last refetch for an unknown `kid` started; periodic fetches do not count.
    last_refetch: std::sync::Mutex<Option<Instant>>,
    last_success: std::sync::Mutex<Option<Instant>>,
    /// When the issuer joined the store (start-up, or the reload that added it).
    added: Instant,
    /// Why the last fetch failed; cleared by a good one.
    last_error: std::sync::Mutex<Option<String>>,
}

/// The keys of every remote issuer of the live policy set, each kept fresh by one refresh loop;
/// issuers are added, moved and dropped on reload.
#[derive(Debug)]
pub struct KeyStore {
    issuers: ArcSwap<HashMap<Arc<str>, Arc<Issuer>>>,
    /// Serializes changes to the set of issuers.
    adding: std::sync::Mutex<()>,
    /// Owns the fetches and refresh loops.
    tasks: Arc<Tasks>,
    outbound: Outbound,
    limits: FetchLimits,
    metrics: Arc<Metrics>,
    cache: Arc<VerifiedTokenCache>,
}

impl KeyLookup for KeyStore {
    fn key_set(&self, issuer: &str) -> Option<Arc<KeySet>> {
        self.issuers.load().get(issuer)?.keys.load_full()
    }
}

impl Issuer {
    fn new(jwks_uri: Option<Box<str>>, timeout: Option<Duration>) -> Self {
        Self {
            jwks_uri,
            timeout,
            keys: ArcSwapOption::empty(),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            last_refetch: std::sync::Mutex::new(None),
            last_success: std::sync::Mutex::new(None),
            added: Instant::now(),
            last_error: std::sync::Mutex::new(None),
        }
    }
}

impl KeyStore {
    /// A store owning its fetches and refresh loops.
    pub fn new(
        limits: FetchLimits,
        metrics: Arc<Metrics>,
        cache: Arc<VerifiedTokenCache>,
    ) -> Result<Self, OutboundError> {
        Self::with_tasks(limits, metrics, cache, Arc::new(Tasks::new()))
    }

    /// A store whose fetches and refresh loops run under `tasks`, which the server stops at
    /// shutdown.
    pub fn with_tasks(
        limits: FetchLimits,
        metrics: Arc<Metrics>,
        cache: Arc<VerifiedTokenCache>,
        tasks: Arc<Tasks>,
    ) -> Result<Self, OutboundError> {
        let outbound = Outbound::new(OutboundLimits {
            timeout: limits.fetch_timeout,
            max_bytes: limits.max_bytes,
            allow_link_local: limits.allow_link_local,
        })?;
        let issuers = ArcSwap::from_pointee(HashMap::new());
        Ok(Self { issuers, adding: std::sync::Mutex::new(()), tasks, outbound, limits, metrics, cache })
    }

    /// Adds the issuers not known yet; returns their names. Known issuers keep their keys.
    pub fn add_issuers(&self, issuers: Vec<RemoteIssuer>) -> Vec<Arc<str>> {
        let _adding = self.adding.lock();
        let current = self.issuers.load_full();
        // New issuers, and known ones whose keys moved (a reload changed `jwksUri` or `timeout`).
        let fresh: Vec<RemoteIssuer> = issuers
            .into_iter()
            .filter(|remote| {
                current
                    .get(&remote.issuer)
                    .is_none_or(|known| known.jwks_uri != remote.jwks_uri || known.timeout != remote.timeout)
            })
            .collect();
        if fresh.is_empty() {
            return Vec::new();
        }
        let mut next = (*current).clone();
        let names = fresh.iter().map(|remote| remote.issuer.clone()).collect();
        for RemoteIssuer { issuer, jwks_uri, timeout } in fresh {
            self.metrics.record_jwks_issuer(&issuer);
            next.insert(issuer, Arc::new(Issuer::new(jwks_uri, timeout)));
        }
        self.issuers.store(Arc::new(next));
        names
    }

    /// Drops the issuers not in `live` (a reload removed them): their keys, their refresh loop,
    /// their metric series and their cached tokens. Returns their names.
    pub fn retain_issuers(&self, live: &[Arc<str>]) -> Vec<Arc<str>> {
        let _adding = self.adding.lock();
        let current = self.issuers.load_full();
        let mut removed: Vec<Arc<str>> = current.keys().filter(|issuer| !live.contains(issuer)).cloned().collect();
        if removed.is_empty() {
            return removed;
        }
        removed.sort();
        let mut next = (*current).clone();
        for issuer in &removed {
            next.remove(issuer);
            self.tasks.cancel(&refresh_task_name(issuer));
            self.metrics.forget_jwks_issuer(issuer);
            self.cache.retain_keys(issuer, &KeySet::default());
            tracing::info!(%issuer, "Dropped an issuer no policy names any more");
        }
        self.issuers.store(Arc::new(next));
        removed
    }

    /// The refresh loops running, by issuer.
    pub fn refreshing(&self) -> Vec<Arc<str>> {
        let loops = self.tasks.running();
        loops.iter().filter_map(|name| name.strip_prefix(REFRESH_TASK_PREFIX)).map(Arc::from).collect()
    }

    fn issuer(&self, issuer: &str) -> Option<Arc<Issuer>> {
        self.issuers.load().get(issuer).cloned()
    }

    /// Issuers that have no keys (never fetched, or every fetch failed).
    pub fn missing(&self) -> Vec<Arc<str>> {
        let mut missing: Vec<Arc<str>> = self
            .issuers
            .load()
            .iter()
            .filter(|(_, entry)| entry.keys.load().is_none())
            .map(|(issuer, _)| issuer.clone())
            .collect();
        missing.sort();
        missing
    }

    /// Issuers that have no keys, each with why its last fetch failed (none while its first
    /// fetch has not ended).
    pub fn missing_with_causes(&self) -> Vec<(Arc<str>, Option<String>)> {
        let issuers = self.issuers.load();
        self.missing()
            .into_iter()
            .map(|issuer| {
                let cause = issuers.get(&issuer).and_then(|entry| entry.last_error.lock().ok()?.clone());
                (issuer, cause)
            })
            .collect()
    }

    /// Seconds since each issuer's last good fetch; for an issuer never fetched, since it
    /// joined the store, so that an issuer that never succeeded ages like a stale one.
    pub fn seconds_since_success(&self) -> Vec<(Arc<str>, f64)> {
        self.issuers
            .load()
            .iter()
            .map(|(issuer, entry)| {
                let last = entry.last_success.lock().ok().and_then(|last| *last).unwrap_or(entry.added);
                (issuer.clone(), last.elapsed().as_secs_f64())
            })
            .collect()
    }

    /// Fetches the keys of `issuers` once, concurrently; see [`Self::begin_fetch`].
    pub async fn fetch(self: &Arc<Self>, issuers: &[Arc<str>]) {
        self.begin_fetch(issuers).await;
    }

    /// Starts a fetch of each of `issuers`' keys now, on the single-flight path of a prompt
    /// refetch: a token arriving meanwhile waits for this fetch instead of starting another.
    /// The returned future ends when every fetch has; dropping it does not stop them.
    pub fn begin_fetch(self: &Arc<Self>, issuers: &[Arc<str>]) -> impl Future<Output = ()> + use<> {
        let fetches: Vec<_> = issuers.iter().map(|issuer| self.start_fetch(issuer)).collect();
        async move {
            for fetch in fetches {
                let _ = fetch.await;
            }
        }
    }

    /// Every known issuer's name.
    pub fn issuer_names(&self) -> Vec<Arc<str>> {
        self.issuers.load().keys().cloned().collect()
    }

    /// Keeps an issuer's keys fresh until a reload drops it or the server stops: on the refresh
    /// interval while it has keys, with a backoff from 1 s to 60 s while it has none. One loop
    /// per issuer: a loop started for an issuer replaces the one it had (a reload moved its keys).
    pub fn keep_fresh(self: &Arc<Self>, issuer: Arc<str>) {
        if self.issuer(&issuer).is_none() {
            return;
        }
        let store = self.clone();
        self.tasks.spawn_unique(refresh_task_name(&issuer), async move {
            let mut backoff = Duration::from_secs(1);
            // Ends when the issuer is no longer known (dropped by a reload meanwhile).
            while let Some(entry) = store.issuer(&issuer) {
                let has_keys = entry.keys.load().is_some();
                tokio::time::sleep(if has_keys { store.limits.refresh_interval } else { backoff }).await;
                backoff =
                    if store.refresh(&issuer).await { Duration::from_secs(1) } else { (backoff * 2).min(MAX_BACKOFF) };
            }
        });
    }

    /// A prompt refetch after a token named an unknown `kid`, at most once per
    /// `min_refetch_interval` per issuer. Callers that arrive while a fetch is under way wait
    /// for it instead of starting another, and are answered by its result. True when the keys
    /// changed meanwhile.
    ///
    /// The fetch runs on a task of its own: a caller that stops waiting (its Check's
    /// `jwks_refetch_wait_ms` is over) does not cancel it, so a slow IdP's new keys still arrive.
    pub async fn refetch(self: &Arc<Self>, issuer: &str) -> bool {
        let Some(entry) = self.issuer(issuer) else { return false };
        let before = entry.keys.load_full();
        let may_fetch = match entry.last_refetch.lock() {
            Ok(mut last) if last.is_none_or(|at| at.elapsed() >= self.limits.min_refetch_interval) => {
                *last = Some(Instant::now());
                true
            }
            _ => false,
        };
        if may_fetch {
            return self.start_fetch(issuer).await.unwrap_or(false);
        }
        let _fetching = entry.fetching.lock().await;
        keys_changed(&before, &entry)
    }

    /// A prompt fetch for every issuer that has no keys, after a token of one of them was
    /// refused for it: rate-limited and single-flight like [`Self::refetch`]. True when any
    /// of them got keys meanwhile.
    pub async fn refetch_missing(self: &Arc<Self>) -> bool {
        let mut got_keys = false;
        for issuer in self.missing() {
            got_keys |= self.refetch(&issuer).await;
        }
        got_keys
    }

    /// One fetch of the issuer's keys, or a share in the one under way; true when it brought keys.
    async fn refresh(self: &Arc<Self>, issuer: &str) -> bool {
        self.start_fetch(issuer).await.unwrap_or(false)
    }

    /// Starts a fetch of the issuer's keys on a task of its own, single-flight: the issuer's
    /// fetch lock is taken now when free, so a fetch started later waits for this one; when a
    /// fetch is under way, this one waits for it and fetches again only if it brought no new
    /// keys. A caller that stops waiting does not cancel the fetch, so a slow IdP's keys still
    /// arrive. The receiver says whether the issuer's keys changed.
    fn start_fetch(self: &Arc<Self>, issuer: &str) -> tokio::sync::oneshot::Receiver<bool> {
        let entry = self.issuer(issuer);
        let before = entry.as_ref().and_then(|entry| entry.keys.load_full());
        let free = entry.as_ref().and_then(|entry| entry.fetching.clone().try_lock_owned().ok());
        let (store, issuer) = (self.clone(), Arc::<str>::from(issuer));
        self.tasks.spawn(format!("jwks fetch {issuer}"), async move {
            let Some(entry) = entry else { return false };
            let _fetching = match free {
                Some(held) => held,
                None => {
                    let held = entry.fetching.clone().lock_owned().await;
                    // The fetch this one waited for brought new keys.
                    if keys_changed(&before, &entry) {
                        return true;
                    }
                    held
                }
            };
            store.fetch_into(&issuer, &entry).await
        })
    }

    async fn fetch_into(&self, issuer: &str, entry: &Arc<Issuer>) -> bool {
        let fetched = self.fetch_keys(issuer, entry.jwks_uri.as_deref(), entry.timeout).await;
        // An issuer dropped or moved by a reload meanwhile: its series belong to the new entry.
        if !self.issuer(issuer).is_some_and(|current| Arc::ptr_eq(&current, entry)) {
            return false;
        }
        match fetched {
            Ok(keys) => {
                for skipped in &keys.skipped {
                    tracing::debug!(%issuer, %skipped, "Skipped a JWKS key");
                }
                self.metrics.record_jwks_fetch(issuer, "ok", Some(keys.len()));
                tracing::info!(%issuer, keys = keys.len(), "Fetched JWKS");
                self.cache.retain_keys(issuer, &keys);
                entry.keys.store(Some(Arc::new(keys)));
                if let Ok(mut last) = entry.last_success.lock() {
                    *last = Some(Instant::now());
                }
                if let Ok(mut last_error) = entry.last_error.lock() {
                    *last_error = None;
                }
                true
            }
            Err(error) => {
                self.metrics.record_jwks_fetch(issuer, error.metric_result(), None);
                let keeping = entry.keys.load().as_ref().map_or(0, |keys| keys.len());
                tracing::warn!(%issuer, %error, keeping, "JWKS fetch failed; keeping the last good keys");
                if let Ok(mut last_error) = entry.last_error.lock() {
                    *last_error = Some(error.to_string());
                }
                false
            }
        }
    }

    async fn fetch_keys(
        &self,
        issuer: &str,
        jwks_uri: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<KeySet, FetchError> {
        let timeout = timeout.unwrap_or(self.limits.fetch_timeout);
        let jwks_uri = match jwks_uri {
            Some(uri) => uri.to_string(),
            None => self.discover(issuer, timeout).await?,
        };
        let text = self.outbound.get_text(&jwks_uri, timeout).await?;
        let keys = KeySet::from_jwks_json(&text)
            .map_err(|message| FetchError::Document { url: redact_url(&jwks_uri), message })?;
        if keys.is_empty() {
            let message = format!("no usable key ({})", keys.skipped.join("; "));
            return Err(FetchError::Document { url: redact_url(&jwks_uri), message });
        }
        Ok(keys)
    }

    /// OIDC discovery: `jwks_uri` from `ISSUER/.well-known/openid-configuration`, whose
    /// `issuer` must be the configured issuer exactly (OpenID Connect Discovery 1.0 section
    /// 4.3): a document for another issuer is not used.
    async fn discover(&self, issuer: &str, timeout: Duration) -> Result<String, FetchError> {
        let address = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let document = self.outbound.get_json(&address, timeout).await?;
        let url = redact_url(&address);
        match document.get("issuer") {
            Some(serde_json::Value::String(found)) if found == issuer => {}
            Some(serde_json::Value::String(found)) => {
                return Err(FetchError::IssuerMismatch { url, found: found.chars().take(256).collect() });
            }
            Some(_) | None => {
                let message = "no `issuer` string in the discovery document".into();
                return Err(FetchError::Document { url, message });
            }
        }
        document
            .get("jwks_uri")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or(FetchError::Document { url, message: "no `jwks_uri` in the discovery document".into() })
    }
}

/// The name of an issuer's refresh loop among the tasks.
fn refresh_task_name(issuer: &str) -> String {
    format!("{REFRESH_TASK_PREFIX}{issuer}")
}

const REFRESH_TASK_PREFIX: &str = "jwks refresh ";

/// Whether `entry` holds keys, other than `before`.
fn keys_changed(before: &Option<Arc<KeySet>>, entry: &Issuer) -> bool {
    let after = entry.keys.load_full();
    !matches!((before, &after), (Some(before), Some(after)) if Arc::ptr_eq(before, after)) && after.is_some()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::outbound::tests::{Route, serve};

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn limits() -> FetchLimits {
        FetchLimits {
            refresh_interval: Duration::from_secs(3600),
            min_refetch_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_millis(500),
            max_bytes: 64 * 1024,
            allow_link_local: false,
        }
    }

    fn store(issuer: &str, jwks_uri: Option<String>) -> Arc<KeyStore> {
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(VerifiedTokenCache::new(10, metrics.clone()));
        let store = KeyStore::new(limits(), metrics, cache).expect("client");
        store.add_issuers(vec![RemoteIssuer {
            issuer: Arc::from(issuer),
            jwks_uri: jwks_uri.map(Into::into),
            timeout: None,
        }]);
        Arc::new(store)
    }

    fn ok(path: &str) -> (u16, String, Duration) {
        match path {
            "/certs" => (200, JWKS.to_string(), Duration::ZERO),
            _ => (404, String::new(), Duration::ZERO),
        }
    }

    #[tokio::test]
    async fn keys_come_from_a_jwks_uri_and_refetches_are_rate_limited() {
        let (base, hits) = serve(ok).await;
        let store = store("https://issuer.example", Some(format!("{base}/certs")));
        assert_eq!(store.missing().len(), 1);
        store.fetch(&store.issuer_names()).await;
        assert!(store.missing().is_empty());
        assert!(store.key_set("https://issuer.example").is_some_and(|keys| keys.has_kid("k1")));
        assert!(store.refetch("https://issuer.example").await, "the first refetch fetches, even right after start-up");
        assert!(!store.refetch("https://issuer.example").await, "a second refetch within the interval is skipped");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    /// A Check waits for a refetch only so long; the refetch itself goes on and brings the keys.
    #[tokio::test]
    async fn a_refetch_its_caller_stopped_waiting_for_still_brings_the_keys() {
        let (base, hits) = serve(|_| (200, JWKS.to_string(), Duration::from_millis(300))).await;
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(VerifiedTokenCache::new(10, metrics.clone()));
        let limits = FetchLimits { fetch_timeout: Duration::from_secs(30), ..limits() };
        let store = Arc::new(KeyStore::new(limits, metrics, cache).expect("client"));
        let issuer: Arc<str> = Arc::from("https://issuer.example");
        let jwks_uri = Some(format!("{base}/certs").into());
        store.add_issuers(vec![RemoteIssuer { issuer: issuer.clone(), jwks_uri, timeout: None }]);
        let waited = tokio::time::timeout(Duration::from_millis(20), store.refetch(&issuer)).await;
        assert!(waited.is_err(), "the caller stopped waiting before the IdP answered");
        // A hang guard only: the keys arrive once the IdP's answer does.
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.key_set(&issuer).is_none() {
            assert!(Instant::now() < deadline, "the abandoned refetch was cancelled: no keys");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    /// A rule without issuer (Istio's `jwksUri` alone) has its keys fetched like an issuer's,
    /// filed and shown (`/readyz`, logs, metrics) as `* (jwksUri URL)`, the URL without its query.
    #[tokio::test]
    async fn a_rule_without_issuer_has_its_keys_fetched_under_its_jwks_uri_without_query() {
        let (base, hits) = serve(|path| {
            if path.starts_with("/certs?") {
                (200, JWKS.to_string(), Duration::ZERO)
            } else {
                (404, String::new(), Duration::ZERO)
            }
        })
        .await;
        let policy = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: any, namespace: jobs}}\nspec:\n  jwtRules:\n  - jwksUri: {base}/certs?key=secret\n"
        );
        let loaded = crate::config::load::load_policy_text("any.yaml", &policy).expect("a rule without issuer loads");
        let settings = crate::settings::Settings::default();
        let workloads = settings.workload_table().expect("no workloads");
        let snapshot = crate::core::Snapshot::new(
            loaded.policies,
            loaded.authn,
            workloads,
            settings.engine_options(),
            &settings.root_namespace,
        );
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(VerifiedTokenCache::new(10, metrics.clone()));
        let store = Arc::new(KeyStore::new(limits(), metrics, cache).expect("client"));
        let added = store.add_issuers(snapshot.remote_issuers());
        let name: Arc<str> = Arc::from(format!("* (jwksUri {base}/certs)"));
        assert_eq!(added, std::slice::from_ref(&name));
        assert_eq!(store.missing(), std::slice::from_ref(&name), "named while it has no keys");
        store.fetch(&added).await;
        assert!(store.key_set(&name).is_some_and(|keys| keys.has_kid("k1")));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    /// Polls `condition` until it holds; fails the test after a generous deadline (a hang guard).
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A refetch began (a token arrived) before the start-up fetch: the start-up fetch waits for
    /// it and takes its keys instead of asking the IdP again.
    #[tokio::test]
    async fn a_start_up_fetch_shares_a_fetch_already_under_way() {
        let (base, hits) = serve(|_| (200, JWKS.to_string(), Duration::from_millis(300))).await;
        let store = store("https://issuer.example", Some(format!("{base}/certs")));
        let early = tokio::spawn({
            let store = store.clone();
            async move { store.refetch("https://issuer.example").await }
        });
        eventually("the refetch reached the IdP", || hits.load(Ordering::SeqCst) == 1).await;
        store.fetch(&store.issuer_names()).await;
        assert!(early.await.unwrap_or(false), "the refetch brought the keys");
        assert!(store.key_set("https://issuer.example").is_some());
        assert_eq!(hits.load(Ordering::SeqCst), 1, "one fetch served both");
    }

    #[tokio::test]
    async fn an_issuer_has_one_refresh_loop_until_a_reload_drops_it_with_its_keys_and_series() {
        let (base, _) = serve(ok).await;
        let issuer: Arc<str> = Arc::from("https://issuer.example");
        let store = store(&issuer, Some(format!("{base}/certs")));
        store.fetch(&store.issuer_names()).await;
        store.keep_fresh(issuer.clone());
        store.keep_fresh(issuer.clone());
        assert_eq!(store.refreshing(), vec![issuer.clone()], "a second loop replaced the first");
        assert!(store.metrics.encode().contains(r#"portcullis_jwks_keys{issuer="https://issuer.example"} 1"#));

        assert!(store.retain_issuers(std::slice::from_ref(&issuer)).is_empty(), "a named issuer stays");
        assert_eq!(store.retain_issuers(&[]), vec![issuer.clone()]);
        assert!(store.refreshing().is_empty(), "its loop stopped");
        assert!(store.key_set(&issuer).is_none() && store.issuer_names().is_empty(), "its keys are gone");
        let exposition = store.metrics.encode();
        assert!(!exposition.contains("issuer.example"), "its series are gone:\n{exposition}");
        store.keep_fresh(issuer);
        assert!(store.refreshing().is_empty(), "no loop for an issuer the store does not know");
    }

    /// The discovery test server's own address (one server: its documents name it).
    static DISCOVERY_BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

    /// A discovery document naming `issuer`, pointing at the test server's JWKS.
    fn discovery_document(issuer: &str) -> (u16, String, Duration) {
        let base = DISCOVERY_BASE.get().map_or("", String::as_str);
        let issuer = issuer.replace("BASE", base);
        (200, format!(r#"{{"issuer": "{issuer}", "jwks_uri": "{base}/certs"}}"#), Duration::ZERO)
    }

    /// A server answering for the issuer `BASE/realms/jobs` (its own document), `BASE/evil`
    /// (a document for another issuer) and `BASE/anonymous` (no `issuer`); started once.
    async fn discovery_server() -> String {
        let (base, _) = serve(|path| match path {
            "/realms/jobs/.well-known/openid-configuration" => discovery_document("BASE/realms/jobs"),
            "/evil/.well-known/openid-configuration" => discovery_document("https://idp.example/realms/jobs"),
            "/anonymous/.well-known/openid-configuration" => {
                (200, r#"{"jwks_uri": "http://127.0.0.1:9/certs"}"#.into(), Duration::ZERO)
            }
            other => ok(other),
        })
        .await;
        DISCOVERY_BASE.get_or_init(|| base).clone()
    }

    #[tokio::test]
    async fn keys_are_found_by_oidc_discovery_from_a_document_for_the_issuer_only() {
        let base = discovery_server().await;
        let store = store(&format!("{base}/realms/jobs"), None);
        store.fetch(&store.issuer_names()).await;
        assert!(store.missing().is_empty(), "keys found through discovery");

        let (without_jwks_uri, _) = serve(|_| (200, "{}".into(), Duration::ZERO)).await;
        let store = self::store(&format!("{without_jwks_uri}/realms/jobs"), None);
        store.fetch(&store.issuer_names()).await;
        assert_eq!(store.missing().len(), 1, "a discovery document without `jwks_uri` gives no keys");

        // A document for another issuer (even one that differs by a trailing slash) or for
        // none is refused, counted, and the last good keys stay.
        for (issuer, expected, label) in [
            (format!("{base}/evil"), "the discovery document is for issuer", "issuer_mismatch"),
            (format!("{base}/realms/jobs/"), "the discovery document is for issuer", "issuer_mismatch"),
            (format!("{base}/anonymous"), "no `issuer` string", "error"),
        ] {
            let store = self::store(&issuer, None);
            let got = store.fetch_keys(&issuer, None, None).await.map(|keys| keys.len());
            assert!(got.as_ref().is_err_and(|error| error.to_string().contains(expected)), "{issuer}: {got:?}");
            // Keys fetched before stay when a refresh meets the document.
            let entry = store.issuer(&issuer).expect("known");
            let last_good = Arc::new(KeySet::from_jwks_json(JWKS).expect("jwks"));
            entry.keys.store(Some(last_good.clone()));
            assert!(!store.refresh(&issuer).await, "{issuer}: refused");
            let kept = store.key_set(&issuer);
            assert!(kept.is_some_and(|keys| Arc::ptr_eq(&keys, &last_good)), "{issuer}: the last good keys");
            let metric = format!(r#"portcullis_jwks_fetches_total{{issuer="{issuer}",result="{label}"}} 1"#);
            assert!(store.metrics.encode().contains(&metric), "{issuer}: no `{metric}` in\n{}", store.metrics.encode());
        }
    }

    /// What fetching keys from the test server answering with `route` gives.
    async fn fetch_error(route: Route) -> String {
        let (base, _) = serve(route).await;
        let store = store("https://issuer.example", None);
        match store.fetch_keys("https://issuer.example", Some(&format!("{base}/certs")), None).await {
            Ok(keys) => format!("ok: {} keys", keys.len()),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn documents_that_are_no_usable_key_set_are_refused_with_a_reason() {
        let cases: Vec<(&str, Route, &str)> = vec![
            ("HTML", |_| (200, "<html>login</html>".into(), Duration::ZERO), "not JSON"),
            ("JSON that is not a JWKS", |_| (200, "{}".into(), Duration::ZERO), "no `keys` list"),
            (
                "only symmetric keys",
                |_| (200, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into(), Duration::ZERO),
                "no usable key",
            ),
        ];
        for (name, route, expected) in cases {
            let got = fetch_error(route).await;
            assert!(got.contains(expected), "{name}: expected `{expected}` in `{got}`");
        }
        assert_eq!(fetch_error(ok).await, "ok: 1 keys");
    }

    #[tokio::test]
    async fn the_last_good_keys_stay_when_the_idp_fails() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let switch = failing.clone();
        let route = move |path: &str| {
            if switch.load(Ordering::SeqCst) { (500, String::new(), Duration::ZERO) } else { ok(path) }
        };
        let (base, hits) = serve(route).await;
        let store = store("https://issuer.example", Some(format!("{base}/certs")));
        store.fetch(&store.issuer_names()).await;
        let last_good = store.key_set("https://issuer.example").expect("the first fetch brings keys");
        failing.store(true, Ordering::SeqCst);
        assert!(!store.refresh("https://issuer.example").await, "a refresh meets the 500");
        assert!(!store.refetch("https://issuer.example").await, "so does a refetch for an unknown kid");
        assert_eq!(hits.load(Ordering::SeqCst), 3, "the failing IdP was asked twice");
        let kept = store.key_set("https://issuer.example").expect("keys stay");
        assert!(Arc::ptr_eq(&kept, &last_good) && kept.has_kid("k1"), "the keys of the last good fetch");
    }
}
