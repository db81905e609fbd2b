//! Telemetry names and emission: Prometheus metrics (`portcullis_*`), log set-up and the per-check decision log; a metric label never carries a path or a token.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use tracing_subscriber::EnvFilter;

mod striped;

use self::striped::{StripedCounter, StripedGauge, StripedHistogram};
use crate::core::redact::{self, LogRedaction};
use crate::core::{Decision, Reason};
use crate::settings::{DecisionLogMode, LogFormat, Settings};

/// The network door a check came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// Envoy's ext_authz Check.
    Grpc,
    /// The forward-auth door.
    Http,
}

impl Door {
    const ALL: [Door; 2] = [Door::Grpc, Door::Http];

    /// The door's `door` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    door: &'static str,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FetchLabels {
    issuer: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DataSourceLabels {
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DataUpdateLabels {
    source: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DoorLabels {
    door: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    door: &'static str,
    listener: u64,
}

/// Why a browser session ended: the `reason` of `portcullis_sessions_ended_total`.
pub const SESSION_END_REASONS: [&str; 6] =
    ["sign_out", "idle", "max_lifetime", "evicted", "back_channel", "refresh_failed"];

/// How a refresh of a session's access token went: the `result` of
/// `portcullis_session_refreshes_total`.
pub const SESSION_REFRESH_RESULTS: [&str; 4] = ["ok", "invalid_grant", "error", "waited"];

/// What became of an update of a data source: the `result` of `portcullis_data_updates_total`.
pub const DATA_UPDATE_RESULTS: [&str; 4] = ["applied", "refused_over_limit", "record_refused", "failed"];

/// Check latency buckets, in seconds: 25 µs to 100 ms.
const LATENCY_BUCKETS: [f64; 11] = [0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];

/// The check latency histogram, under [`LATENCY_BUCKETS`].
type LatencyHistogram = StripedHistogram<{ LATENCY_BUCKETS.len() }>;

/// What became of a check that presented an API key: the `result` of
/// `portcullis_api_key_checks_total`.
const API_KEY_CHECK_RESULTS: [&str; 3] = ["known", "unknown", "expired"];

/// Every metric the server exports, registered under the `portcullis_` prefix. What every check
/// writes is striped per thread (module `striped`), so that cores do not write the same cache line.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    checks: Family<CheckLabels, StripedCounter>,
    check_duration: Family<DoorLabels, LatencyHistogram, fn() -> LatencyHistogram>,
    policies_loaded: Gauge,
    policy_generation: Gauge,
    jwks_fetches: Family<FetchLabels, Counter>,
    jwks_keys: Family<IssuerLabels, Gauge>,
    token_cache_hits: StripedCounter,
    token_cache_misses: StripedCounter,
    token_cache_entries: Gauge,
    token_rejections_cached: StripedCounter,
    rejected_token_cache_entries: Gauge,
    reloads: Family<ResultLabels, Counter>,
    jwks_age: Family<IssuerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    unidentified_workload_checks: Family<DoorLabels, StripedCounter>,
    checks_in_flight: StripedGauge,
    session_store_errors: Counter,
    api_key_checks: Family<ResultLabels, StripedCounter>,
    api_key_reloads: Family<ResultLabels, Counter>,
    api_keys_loaded: Gauge,
    introspection_calls: Family<ResultLabels, Counter>,
    introspection_cache_hits: StripedCounter,
    revocation_entries: Gauge,
    revocation_list_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    revocation_additions: Family<SourceLabels, Counter>,
    revocation_evictions: Counter,
    revocation_sync_errors: Counter,
    revocation_refusals: StripedCounter,
    decision_lines_dropped: StripedCounter,
    introspection_providers_failing: Gauge,
    sessions_opened: Counter,
    sessions_ended: Family<ReasonLabels, Counter>,
    session_refreshes: Family<ResultLabels, Counter>,
    sessions_held: Gauge,
    data_records: Family<DataSourceLabels, Gauge>,
    data_bytes: Family<DataSourceLabels, Gauge>,
    data_age: Family<DataSourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    data_updates: Family<DataUpdateLabels, Counter>,
    connections_accepted: Family<ListenerLabels, Counter>,
    /// The series of `checks` and `check_duration_seconds` a check writes, by door and reason,
    /// found in their families once: a check then neither hashes labels nor takes a lock.
    check_series: [[OnceLock<StripedCounter>; Reason::ALL.len()]; Door::ALL.len()],
    duration_series: [OnceLock<LatencyHistogram>; Door::ALL.len()],
    /// The series of `unidentified_workload_checks` by door, and of `api_key_checks` by result
    /// (in [`API_KEY_CHECK_RESULTS`]' order), found once in the same way.
    unidentified_series: [OnceLock<StripedCounter>; Door::ALL.len()],
    api_key_check_series: [OnceLock<StripedCounter>; API_KEY_CHECK_RESULTS.len()],
}

/// Registers each metric under its name and help, in the order the exposition lists them, and
/// hands back the handle that records into it.
struct Registrar<'r>(&'r mut Registry);

impl Registrar<'_> {
    /// Registers `metric` and returns it.
    fn metric<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    /// Registers a new metric of its type's default (a counter or gauge at 0, an empty family).
    fn new_metric<M: Metric + Clone + Default>(&mut self, name: &str, help: &str) -> M {
        self.metric(name, help, M::default())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let mut register = Registrar(&mut registry);
        let metrics = Self {
            checks: register.new_metric("checks", "Checks decided, by door, decision and reason"),
            check_duration: register.metric(
                "check_duration_seconds",
                "Time to decide one check",
                Family::new_with_constructor(|| LatencyHistogram::new(LATENCY_BUCKETS)),
            ),
            policies_loaded: register.new_metric("policies_loaded", "AuthorizationPolicies in the live set"),
            policy_generation: register
                .new_metric("policy_generation", "Generation of the live policy set, 1 for the first"),
            jwks_fetches: register.new_metric("jwks_fetches", "JWKS fetches, by issuer and result"),
            jwks_keys: register.new_metric("jwks_keys", "Usable keys of each issuer's last good JWKS"),
            token_cache_hits: register.new_metric("token_cache_hits", "Tokens found in the verified-token cache"),
            token_cache_misses: register
                .new_metric("token_cache_misses", "Tokens not found in the verified-token cache"),
            token_cache_entries: register.new_metric("token_cache_entries", "Tokens held by the verified-token cache"),
            token_rejections_cached: register.new_metric(
                "token_rejections_cached",
                "Tokens refused again from the rejected-token cache, without a signature check",
            ),
            rejected_token_cache_entries: register
                .new_metric("rejected_token_cache_entries", "Tokens held by the rejected-token cache"),
            checks_in_flight: register.new_metric("checks_in_flight", "Checks being decided now, by either door"),
            reloads: register.new_metric("reloads", "Policy reloads, by result (`ok`, `error`)"),
            jwks_age: register
                .new_metric("jwks_seconds_since_success", "Seconds since each issuer's last good JWKS fetch"),
            unidentified_workload_checks: register.new_metric(
                "unidentified_workload_checks",
                "Checks whose workload no source named (no namespace), by door",
            ),
            session_store_errors: register.new_metric(
                "session_store_errors",
                "Failed session store (Redis) commands, lost listeners and stored sessions that did not open",
            ),
            api_key_checks: register.new_metric(
                "api_key_checks",
                "Checks that presented an API key, by result (`known`, `unknown`, `expired`)",
            ),
            api_key_reloads: register.new_metric("api_key_reloads", "API key file reloads, by result (`ok`, `error`)"),
            api_keys_loaded: register.new_metric("api_keys_loaded", "API keys in the live key table"),
            introspection_calls: register.new_metric(
                "introspection_calls",
                "Calls to introspection endpoints, by result (`active`, `inactive`, `error`, `busy`)",
            ),
            introspection_cache_hits: register
                .new_metric("introspection_cache_hits", "Opaque tokens answered from remembered introspection answers"),
            revocation_entries: register.new_metric("revocation_entries", "Entries in this replica's revocation list"),
            revocation_list_age: register.new_metric(
                "revocation_list_age_seconds",
                "Seconds since this replica last knew its revocation list held every replica's additions (0: in sync)",
            ),
            revocation_additions: register.new_metric(
                "revocation_additions",
                "Revocations added on this replica, by source (`admin`, `back_channel`, `sso_logout`)",
            ),
            revocation_evictions: register
                .new_metric("revocation_evictions", "Revocations dropped before their end because the list was full"),
            revocation_sync_errors: register.new_metric(
                "revocation_sync_errors",
                "Failed revocation writes to Redis and lost revocation listeners",
            ),
            revocation_refusals: register
                .new_metric("revocation_refusals", "Tokens and sessions refused because a revocation names them"),
            decision_lines_dropped: register.new_metric(
                "decision_log_lines_dropped",
                "Decision-log lines not written because a second already had `decision_log_max_lines_per_sec`",
            ),
            introspection_providers_failing: register
                .new_metric("introspection_providers_failing", "Introspection providers whose last call failed"),
            sessions_opened: register.new_metric("sessions_opened", "Browser sessions opened by a login"),
            sessions_ended: register.new_metric(
                "sessions_ended",
                "Browser sessions ended, by reason (`sign_out`, `idle`, `max_lifetime`, `evicted`, `back_channel`, \
                 `refresh_failed`)",
            ),
            session_refreshes: register.new_metric(
                "session_refreshes",
                "Refreshes of a session's access token at the provider, by result (`ok`, `invalid_grant`, `error`, \
                 `waited`: another replica's refresh was waited for)",
            ),
            sessions_held: register.new_metric(
                "sessions_held",
                "Browser sessions held in this replica's memory (with Redis: local copies)",
            ),
            data_records: register.new_metric("data_records", "Records in each data source's live table"),
            data_bytes: register
                .new_metric("data_bytes", "Bytes each data source's live table counts against its limit"),
            data_age: register.new_metric(
                "data_age_seconds",
                "Seconds since each data source was last known current (a load, a change, a 304, a heartbeat)",
            ),
            data_updates: register.new_metric(
                "data_updates",
                "Updates of data sources, by source and result (`applied`, `refused_over_limit`, `record_refused`: \
                 documents skipped, `failed`)",
            ),
            connections_accepted: register.new_metric(
                "connections_accepted",
                "Connections accepted by a check door, by door and listener (one listener per runtime in `per_core` \
                 mode)",
            ),
            check_series: Default::default(),
            duration_series: Default::default(),
            unidentified_series: Default::default(),
            api_key_check_series: Default::default(),
            registry,
        };
        // Exported at 0 from start-up, so that an alert on each of these has a series before the first one.
        for door in Door::ALL {
            drop(metrics.unidentified_workload_checks.get_or_create(&DoorLabels { door: door.as_str() }));
        }
        for result in API_KEY_CHECK_RESULTS {
            drop(metrics.api_key_checks.get_or_create(&ResultLabels { result }));
        }
        let results: [(&Family<ResultLabels, Counter>, &[&'static str]); 2] = [
            (&metrics.api_key_reloads, &["ok", "error"]),
            (&metrics.introspection_calls, &["active", "inactive", "error", "busy"]),
        ];
        for (family, labels) in results {
            for &result in labels {
                family.get_or_create(&ResultLabels { result }).inc_by(0);
            }
        }
        for source in crate::revocation::Source::ALL {
            metrics.revocation_additions.get_or_create(&SourceLabels { source: source.as_str() }).inc_by(0);
        }
        for result in SESSION_REFRESH_RESULTS {
            metrics.session_refreshes.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        for reason in SESSION_END_REASONS {
            metrics.sessions_ended.get_or_create(&ReasonLabels { reason }).inc_by(0);
        }
        metrics
    }

    /// A fetch of an issuer's keys; `result` is `ok`, `error` or `issuer_mismatch` (a discovery
    /// document for another issuer).
    pub fn record_jwks_fetch(&self, issuer: &str, result: &'static str, keys: Option<usize>) {
        self.jwks_fetches.get_or_create(&FetchLabels { issuer: issuer.into(), result }).inc();
        if let Some(keys) = keys {
            self.jwks_keys
                .get_or_create(&IssuerLabels { issuer: issuer.into() })
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
        }
    }

    /// Exports an issuer's series from the moment it is known: its keys at 0, its fetches at
    /// 0 for `ok` and `error`, so that an alert can see an issuer that never succeeded.
    pub fn record_jwks_issuer(&self, issuer: &str) {
        for result in ["ok", "error"] {
            self.jwks_fetches.get_or_create(&FetchLabels { issuer: issuer.into(), result }).inc_by(0);
        }
        let labels = IssuerLabels { issuer: issuer.into() };
        drop(self.jwks_keys.get_or_create(&labels));
        drop(self.jwks_age.get_or_create(&labels));
    }

    /// Removes the series of an issuer no policy names any more.
    pub fn forget_jwks_issuer(&self, issuer: &str) {
        for result in ["ok", "error", "issuer_mismatch"] {
            self.jwks_fetches.remove(&FetchLabels { issuer: issuer.into(), result });
        }
        let labels = IssuerLabels { issuer: issuer.into() };
        self.jwks_keys.remove(&labels);
        self.jwks_age.remove(&labels);
    }

    /// Exports a data source's series from the moment it is declared: records, bytes and age at
    /// 0, its updates at 0 for every result.
    pub fn record_data_source(&self, source: &str) {
        for result in DATA_UPDATE_RESULTS {
            self.data_updates.get_or_create(&DataUpdateLabels { source: source.into(), result }).inc_by(0);
        }
        let labels = DataSourceLabels { source: source.into() };
        drop(self.data_records.get_or_create(&labels));
        drop(self.data_bytes.get_or_create(&labels));
        drop(self.data_age.get_or_create(&labels));
    }

    /// Removes the series of a data source no policy file declares any more.
    pub fn forget_data_source(&self, source: &str) {
        for result in DATA_UPDATE_RESULTS {
            self.data_updates.remove(&DataUpdateLabels { source: source.into(), result });
        }
        let labels = DataSourceLabels { source: source.into() };
        self.data_records.remove(&labels);
        self.data_bytes.remove(&labels);
        self.data_age.remove(&labels);
    }

    /// Sets the size of a data source's live table.
    pub fn record_data_table(&self, source: &str, records: usize, bytes: usize) {
        let labels = DataSourceLabels { source: source.into() };
        self.data_records.get_or_create(&labels).set(i64::try_from(records).unwrap_or(i64::MAX));
        self.data_bytes.get_or_create(&labels).set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts `count` updates of a data source with `result`, one of [`DATA_UPDATE_RESULTS`].
    pub fn record_data_updates(&self, source: &str, result: &'static str, count: u64) {
        self.data_updates.get_or_create(&DataUpdateLabels { source: source.into(), result }).inc_by(count);
    }

    /// Sets each data source's age; called right before a scrape.
    pub fn record_data_ages(&self, ages: &[(std::sync::Arc<str>, f64)]) {
        for (source, seconds) in ages {
            self.data_age.get_or_create(&DataSourceLabels { source: source.to_string() }).set(*seconds);
        }
    }

    /// Counts a token cache lookup as a hit or a miss.
    pub fn record_token_cache_lookup(&self, hit: bool) {
        if hit {
            self.token_cache_hits.inc()
        } else {
            self.token_cache_misses.inc()
        };
    }

    /// Counts a reload, `ok` or `error`.
    pub fn record_reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Counts a check that presented an API key, by result: `known`, `unknown` or `expired`.
    pub fn record_api_key_check(&self, result: &'static str) {
        let series = API_KEY_CHECK_RESULTS.iter().position(|&known| known == result);
        match series.and_then(|index| self.api_key_check_series.get(index)) {
            Some(series) => {
                series.get_or_init(|| self.api_key_checks.get_or_create(&ResultLabels { result }).clone()).inc();
            }
            None => self.api_key_checks.get_or_create(&ResultLabels { result }).inc(),
        }
    }

    /// Counts a reload of the API key files, `ok` or `error`, and sets how many keys are live.
    pub fn record_api_key_reload(&self, ok: bool, keys: usize) {
        self.api_key_reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
        self.record_api_keys_loaded(keys);
    }

    /// Counts a call to an introspection endpoint, by result: `active`, `inactive`, `error`
    /// (down, slow, an error status, no answer) or `busy` (no call slot freed in time).
    pub fn record_introspection_call(&self, result: &'static str) {
        self.introspection_calls.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts an opaque token answered from a remembered introspection answer.
    pub fn record_introspection_cache_hit(&self) {
        self.introspection_cache_hits.inc();
    }

    /// Counts an introspection provider whose last call failed, when it `started` failing, or
    /// no longer counts it, when a call got an answer again.
    pub fn record_introspection_provider_failing(&self, started: bool) {
        if started {
            self.introspection_providers_failing.inc();
        } else {
            self.introspection_providers_failing.dec();
        }
    }

    /// Sets how many API keys the live key table holds.
    pub fn record_api_keys_loaded(&self, keys: usize) {
        self.api_keys_loaded.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Sets the age of each issuer's keys; called right before a scrape.
    pub fn record_jwks_ages(&self, ages: &[(Arc<str>, f64)]) {
        for (issuer, seconds) in ages {
            self.jwks_age.get_or_create(&IssuerLabels { issuer: issuer.to_string() }).set(*seconds);
        }
    }

    /// A session store command that failed, a lost listener, or a stored session that did not open.
    pub fn record_session_store_error(&self) {
        self.session_store_errors.inc();
    }

    /// Counts a revocation added on this replica, by where it came from.
    pub fn record_revocation_addition(&self, source: crate::revocation::Source) {
        self.revocation_additions.get_or_create(&SourceLabels { source: source.as_str() }).inc();
    }

    /// Sets how many entries the revocation list holds.
    pub fn record_revocation_entries(&self, entries: usize) {
        self.revocation_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Sets the revocation list's age; called right before a scrape.
    pub fn record_revocation_list_age(&self, seconds: f64) {
        self.revocation_list_age.set(seconds);
    }

    /// Counts a revocation dropped before its end because the list was full.
    pub fn record_revocation_eviction(&self) {
        self.revocation_evictions.inc();
    }

    /// Counts a revocation write Redis did not take, or a lost listener.
    pub fn record_revocation_sync_error(&self) {
        self.revocation_sync_errors.inc();
    }

    /// Counts a token or session refused as revoked.
    pub fn record_revocation_refusal(&self) {
        self.revocation_refusals.inc();
    }

    /// Counts a decision-log line not written for want of budget.
    pub fn record_decision_line_dropped(&self) {
        self.decision_lines_dropped.inc();
    }

    /// Counts a browser session opened by a login.
    pub fn record_session_opened(&self) {
        self.sessions_opened.inc();
    }

    /// Counts a browser session ended, by reason (one of [`SESSION_END_REASONS`]).
    pub fn record_session_ended(&self, reason: &'static str, sessions: usize) {
        self.sessions_ended.get_or_create(&ReasonLabels { reason }).inc_by(u64::try_from(sessions).unwrap_or(u64::MAX));
    }

    /// Counts a refresh of a session's access token, by result (one of [`SESSION_REFRESH_RESULTS`]).
    pub fn record_session_refresh(&self, result: &'static str) {
        self.session_refreshes.get_or_create(&ResultLabels { result }).inc();
    }

    /// Sets how many sessions (or local copies of shared ones) this replica holds in memory.
    pub fn record_sessions_held(&self, sessions: usize) {
        self.sessions_held.set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }

    /// Sets how many tokens the cache holds.
    pub fn record_token_cache_size(&self, entries: usize) {
        self.token_cache_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Counts a token refused again from the rejected-token cache.
    pub fn record_token_rejection_cached(&self) {
        self.token_rejections_cached.inc();
    }

    /// Sets how many tokens the rejected-token cache holds.
    pub fn record_rejected_token_cache_size(&self, entries: usize) {
        self.rejected_token_cache_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Counts a check by door, decision and reason, and observes how long it took.
    #[expect(
        clippy::indexing_slicing,
        reason = "the series have a row per `Door` and a cell per `Reason`, by discriminant"
    )]
    pub fn record_check(&self, door: Door, decision: &Decision, elapsed: Duration) {
        let reason = decision.reason;
        let counter = self.check_series[door as usize][reason as usize].get_or_init(|| {
            let decision = if reason.is_allow() { "allow" } else { "deny" };
            self.checks.get_or_create(&CheckLabels { door: door.as_str(), decision, reason: reason.as_str() }).clone()
        });
        counter.inc();
        let duration = self.duration_series[door as usize]
            .get_or_init(|| self.check_duration.get_or_create(&DoorLabels { door: door.as_str() }).clone());
        duration.observe(elapsed);
    }

    /// The counter of connections that `door` accepts on its listener `listener` (from 0).
    pub fn connections_accepted(&self, door: Door, listener: usize) -> Counter {
        let listener = u64::try_from(listener).unwrap_or(u64::MAX);
        self.connections_accepted.get_or_create(&ListenerLabels { door: door.as_str(), listener }).clone()
    }

    /// Counts a check whose workload the settings do not name.
    #[expect(clippy::indexing_slicing, reason = "the series have a cell per `Door`, by discriminant")]
    pub fn record_unidentified_workload(&self, door: Door) {
        let series = self.unidentified_series[door as usize].get_or_init(|| {
            self.unidentified_workload_checks.get_or_create(&DoorLabels { door: door.as_str() }).clone()
        });
        series.inc();
    }

    /// Counts one check in `portcullis_checks_in_flight` until the guard drops (a cancelled
    /// check too).
    pub fn check_in_flight(&self) -> InFlightCheck<'_> {
        self.checks_in_flight.inc();
        InFlightCheck(&self.checks_in_flight)
    }

    /// How many checks are being decided now.
    pub fn checks_in_flight(&self) -> i64 {
        self.checks_in_flight.get()
    }

    /// Sets the live policy set's generation and its count of policies.
    pub fn record_policy_set(&self, generation: u64, policies: usize) {
        self.policy_generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.policies_loaded.set(i64::try_from(policies).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One check counted in `portcullis_checks_in_flight`; uncounted when dropped.
#[derive(Debug)]
pub struct InFlightCheck<'a>(&'a StripedGauge);

impl Drop for InFlightCheck<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Sets up logging to stderr; `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Lets a line through at most once per interval and counts the events in between, so that a
/// flood of one event cannot flood the log.
#[derive(Debug)]
pub struct RateLimitedLine {
    interval_ms: u64,
    started: Instant,
    /// Milliseconds after `started` from which the next line may be written.
    next_line_at_ms: AtomicU64,
    /// Events since the last line written, counted per thread.
    unlogged: StripedCounter,
}

impl RateLimitedLine {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            started: Instant::now(),
            next_line_at_ms: AtomicU64::new(0),
            unlogged: StripedCounter::default(),
        }
    }

    /// Counts one event; `Some(events since the last line, this one included)` when a line is
    /// to be written now.
    pub fn count(&self) -> Option<u64> {
        self.count_at(self.started.elapsed())
    }

    /// [`Self::count`] at `elapsed` since the limiter was made.
    fn count_at(&self, elapsed: Duration) -> Option<u64> {
        self.unlogged.inc();
        let now_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let next = self.next_line_at_ms.load(Ordering::Relaxed);
        let won = now_ms >= next
            && self
                .next_line_at_ms
                .compare_exchange(next, now_ms.saturating_add(self.interval_ms), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        won.then(|| self.unlogged.take())
    }
}

/// The warning about checks whose workload no source named: what the request showed (door,
/// host, whether a destination principal came), at most one line per 10 s. Never a header's
/// value other than the host, never a token.
#[derive(Debug)]
pub struct UnidentifiedWorkloadLog {
    line: RateLimitedLine,
}

impl Default for UnidentifiedWorkloadLog {
    fn default() -> Self {
        Self { line: RateLimitedLine::new(Duration::from_secs(10)) }
    }
}

impl UnidentifiedWorkloadLog {
    /// Counts one such check and writes the warning when its turn has come.
    pub fn record(&self, door: Door, host: &str, has_destination_principal: bool, decision: &Decision) {
        if let Some(checks) = self.line.count() {
            tracing::warn!(
                door = door.as_str(),
                host,
                destination_principal = has_destination_principal,
                reason = decision.reason.as_str(),
                checks_since_last_line = checks,
                "Check for a workload no source names: send its namespace (context extensions, the HTTP \
                 door's context) or add a `workloads` row"
            );
        }
    }
}

/// A budget of lines a second, so that a flood of denied requests cannot flood the log.
#[derive(Debug)]
struct LineBudget {
    per_second: u32,
    started: Instant,
    /// The current second since `started` (high 32 bits) and the lines written in it (low 32
    /// bits), in one word: a line is admitted by one compare-and-swap, and once a second's
    /// budget is spent a check only reads it.
    window: AtomicU64,
}

impl LineBudget {
    fn new(per_second: u32) -> Self {
        Self { per_second, started: Instant::now(), window: AtomicU64::new(0) }
    }

    /// Whether one more line may be written this second.
    fn admit(&self) -> bool {
        self.admit_in(u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX))
    }

    /// [`Self::admit`] in the `second`-th second since the budget was made.
    fn admit_in(&self, second: u32) -> bool {
        let mut window = self.window.load(Ordering::Relaxed);
        loop {
            let (window_second, written) = (window >> 32, window & u64::from(u32::MAX));
            let opens = window_second != u64::from(second);
            if !opens && written >= u64::from(self.per_second) {
                return false;
            }
            let next = if opens { (u64::from(second) << 32) | 1 } else { window + 1 };
            match self.window.compare_exchange_weak(window, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => window = seen,
            }
        }
    }
}

/// The decision log: one structured line per decision, as configured (which decisions, what
/// share, at which level, with claims or not, how many a second at most). Never the token: the
/// request's text is logged through the policy set's [`LogRedaction`].
#[derive(Debug)]
pub struct DecisionLog {
    mode: DecisionLogMode,
    /// Log one decision in this many; 0 logs none.
    every: u64,
    /// The wanted decisions seen, when one in `every` > 1 is logged: one count every core
    /// writes, so that exactly one in `every` is logged, in order.
    counter: AtomicU64,
    level: tracing::Level,
    claims: bool,
    dry_run: bool,
    /// At most this many lines a second, when limited.
    budget: Option<LineBudget>,
    /// The warning that lines were not written: at most one per 10 s, with how many.
    dropped_warning: RateLimitedLine,
    /// Where the lines not written are counted.
    metrics: Arc<Metrics>,
}

/// One decision and the request it was about.
#[derive(Debug)]
pub struct DecisionRecord<'a> {
    /// The door the request came through.
    pub door: Door,
    /// The request's `x-request-id`, or empty.
    pub request_id: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// The request's authority.
    pub host: &'a str,
    /// The request's path, logged with what `redaction` hides taken out.
    pub path: &'a str,
    /// What was decided.
    pub decision: &'a Decision,
    /// How long the check took.
    pub elapsed: Duration,
    /// What the live policy set makes secret in `path`.
    pub redaction: &'a LogRedaction,
}

macro_rules! decision_event {
    ($level:expr, $record:expr, $decision:expr, $principal:expr, $policy:expr, $claims:expr, $enforced:expr) => {
        tracing::event!(
            target: "portcullis::decision",
            $level,
            request_id = $record.request_id,
            door = $record.door.as_str(),
            method = $record.method,
            host = $record.host,
            path = $record.path,
            principal = $principal,
            decision = if $decision.is_allow() { "allow" } else { "deny" },
            enforced = $enforced,
            reason = $decision.reason.as_str(),
            policy = $policy,
            jwt_error = $decision.jwt_error.map(|error| error.message()).unwrap_or_default(),
            claims = $claims,
            latency_us = u64::try_from($record.elapsed.as_micros()).unwrap_or(u64::MAX),
            "Decided"
        )
    };
}

impl DecisionLog {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive rate's inverse, rounded and at least 1; `as` saturates a huge one"
    )]
    /// The decision log the settings ask for: which decisions, at which level, how sampled, how
    /// many a second; the lines over that budget are counted in `metrics`.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Self {
        let rate = settings.decision_log_sample_rate;
        let every = if rate <= 0.0 { 0 } else { (1.0 / rate).round().max(1.0) as u64 };
        let level = match settings.decision_log_level.as_str() {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "debug" => tracing::Level::DEBUG,
            _ => tracing::Level::INFO,
        };
        Self {
            mode: settings.decision_log,
            every,
            counter: AtomicU64::new(0),
            level,
            claims: settings.decision_log_claims,
            dry_run: settings.dry_run,
            budget: (settings.decision_log_max_lines_per_sec > 0)
                .then(|| LineBudget::new(settings.decision_log_max_lines_per_sec)),
            dropped_warning: RateLimitedLine::new(Duration::from_secs(10)),
            metrics,
        }
    }

    /// Whether the budget lets this line be written; a line it drops is counted, and warned of
    /// at most once per 10 s.
    fn within_budget(&self) -> bool {
        let Some(budget) = &self.budget else { return true };
        if budget.admit() {
            return true;
        }
        self.metrics.record_decision_line_dropped();
        if let Some(dropped) = self.dropped_warning.count() {
            tracing::warn!(
                target: "portcullis::decision",
                lines_dropped = dropped,
                max_lines_per_sec = budget.per_second,
                "Decision-log lines not written: more decisions to log than decision_log_max_lines_per_sec"
            );
        }
        false
    }

    /// Whether the next wanted decision is one to log: all of them (nothing counted), none, or
    /// one in `every`.
    fn is_sampled(&self) -> bool {
        match self.every {
            0 => false,
            1 => true,
            every => self.counter.fetch_add(1, Ordering::Relaxed).is_multiple_of(every),
        }
    }

    /// Writes the line for one decision, when this decision is to be logged.
    pub fn record(&self, record: &DecisionRecord<'_>) {
        let decision = record.decision;
        let wanted = match self.mode {
            DecisionLogMode::All => true,
            DecisionLogMode::Deny => !decision.is_allow(),
            DecisionLogMode::None => false,
        };
        if !wanted || !self.is_sampled() || !self.within_budget() {
            return;
        }
        // Every text the client chose, as it may be logged.
        let (request_id, method) = (redact::without_jwts(record.request_id), redact::without_jwts(record.method));
        let (host, path) = (redact::authority(record.host), record.redaction.target(record.path));
        let record = &DecisionRecord { request_id: &request_id, method: &method, host: &host, path: &path, ..*record };
        let principal =
            decision.identity.as_ref().map(|id| format!("{}/{}", id.issuer(), id.subject())).unwrap_or_default();
        let policy = decision.policy.as_ref().map(ToString::to_string).unwrap_or_default();
        let claims = match (&decision.identity, self.claims) {
            (Some(identity), true) => identity.claims_json().unwrap_or_default(),
            _ => "",
        };
        // Under the global dry run a deny is logged, and answered with an allow.
        let enforced = decision.is_allow() || !self.dry_run;
        match self.level {
            tracing::Level::ERROR => {
                decision_event!(tracing::Level::ERROR, record, decision, principal, policy, claims, enforced)
            }
            tracing::Level::WARN => {
                decision_event!(tracing::Level::WARN, record, decision, principal, policy, claims, enforced)
            }
            tracing::Level::DEBUG => {
                decision_event!(tracing::Level::DEBUG, record, decision, principal, policy, claims, enforced)
            }
            _ => decision_event!(tracing::Level::INFO, record, decision, principal, policy, claims, enforced),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_line_is_written_once_per_interval_with_the_count_since_the_last() {
        let line = RateLimitedLine::new(Duration::from_secs(10));
        let at = Duration::from_secs;
        assert_eq!(line.count_at(at(0)), Some(1));
        assert_eq!(line.count_at(at(1)), None);
        assert_eq!(line.count_at(at(9)), None);
        assert_eq!(line.count_at(at(10)), Some(3));
        assert_eq!(line.count_at(at(15)), None);
        assert_eq!(line.count_at(at(100)), Some(2));
    }

    #[test]
    fn a_line_budget_admits_its_lines_in_each_second_and_no_more() {
        let budget = LineBudget::new(2);
        let admitted: Vec<bool> = [0, 0, 0, 0, 1, 1, 1, 3, 3].into_iter().map(|s| budget.admit_in(s)).collect();
        assert_eq!(admitted, [true, true, false, false, true, true, false, true, true]);
    }

    #[test]
    fn unidentified_workload_checks_count_by_door() {
        let metrics = Metrics::new();
        metrics.record_unidentified_workload(Door::Http);
        metrics.record_unidentified_workload(Door::Http);
        metrics.record_unidentified_workload(Door::Grpc);
        let text = metrics.encode();
        for line in [
            "portcullis_unidentified_workload_checks_total{door=\"http\"} 2",
            "portcullis_unidentified_workload_checks_total{door=\"grpc\"} 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn each_check_counts_under_its_own_door_and_reason() {
        let metrics = Metrics::new();
        for (times, door) in Door::ALL.into_iter().enumerate() {
            for reason in Reason::ALL {
                for _ in 0..=times {
                    metrics.record_check(door, &Decision::new(reason, None), Duration::from_micros(30));
                }
            }
        }
        let text = metrics.encode();
        for (times, door) in Door::ALL.into_iter().enumerate() {
            for reason in Reason::ALL {
                let decision = if reason.is_allow() { "allow" } else { "deny" };
                let line = format!(
                    "portcullis_checks_total{{door=\"{}\",decision=\"{decision}\",reason=\"{}\"}} {}",
                    door.as_str(),
                    reason.as_str(),
                    times + 1
                );
                assert!(text.contains(&line), "missing `{line}` in\n{text}");
            }
            let count = format!(
                "portcullis_check_duration_seconds_count{{door=\"{}\"}} {}",
                door.as_str(),
                (times + 1) * Reason::ALL.len()
            );
            assert!(text.contains(&count), "missing `{count}` in\n{text}");
        }
    }
}
