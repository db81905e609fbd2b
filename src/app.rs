//! Composition root: first policy set, listeners, the gRPC, HTTP and admin servers, reload, background tasks, and graceful shutdown; nothing but main.rs imports it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::load::LoadedPolicies;
use crate::core::Snapshot;
use crate::data::{FeedContext, Store};
use crate::doors::admin::AdminState;
use crate::doors::grpc::AuthorizationServer;
use crate::doors::listener::ConnectionSlots;
use crate::doors::{admin, http, listener};
use crate::engine::Engine;
use crate::identity::api_keys::{ApiKeys, KeyFileErrors};
use crate::identity::introspection::{Introspection, IntrospectionLimits};
use crate::identity::jwks::KeyStore;
use crate::identity::token_cache::VerifiedTokenCache;
use crate::outbound::{Outbound, OutboundLimits};
use crate::policy_set::{PolicySetError, SetSummary, build_snapshot, log_not_evaluated};
use crate::reload::Reloader;
use crate::revocation::Revocations;
use crate::runtime::{self, BindError, CheckDoors};
use crate::settings::{HttpMode, Settings, SettingsError};
use crate::sso::Sso;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// How long shutdown waits for the background tasks (reload, key fetches and refresh loops) to
/// end once cancelled; they end at their next `.await`, so this only bounds a stuck one.
const TASKS_STOP_BOUND: Duration = Duration::from_secs(5);

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The policy set or the settings it is read with are invalid.
    #[error(transparent)]
    PolicySet(#[from] PolicySetError),
    /// A setting is invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// An API key file is invalid.
    #[error(transparent)]
    ApiKeys(#[from] KeyFileErrors),
    /// A door's address cannot be listened on.
    #[error("cannot listen on {address} ({door}): {source}")]
    Bind {
        /// The door's name.
        door: &'static str,
        /// The address asked for.
        address: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// A door's server, or the key store, failed.
    #[error("{door} server failed: {message}")]
    Serve {
        /// The door's name.
        door: &'static str,
        /// What failed.
        message: String,
    },
}

fn log_load(snapshot: &Snapshot, loaded: &LoadedPolicies) {
    log_not_evaluated(loaded);
    let summary = SetSummary::of(snapshot, loaded);
    tracing::info!(
        files = summary.files,
        authorization_policies = summary.authorization_policies,
        custom_policies = summary.custom_policies,
        request_authentications = summary.request_authentications,
        kept_claims = snapshot.kept_claims().len(),
        "Loaded the policy set"
    );
}

async fn bind(door: &'static str, address: SocketAddr) -> Result<TcpListener, AppError> {
    let listener = TcpListener::bind(address).await.map_err(|source| AppError::Bind { door, address, source })?;
    let bound = listener.local_addr().map_err(|source| AppError::Bind { door, address, source })?;
    tracing::info!(door = %door, address = %bound, "Listening");
    Ok(listener)
}

impl From<BindError> for AppError {
    fn from(BindError { door, address, source }: BindError) -> Self {
        Self::Bind { door, address, source }
    }
}

/// Runs the server until SIGTERM or Ctrl-C. An invalid policy set fails before any port is bound.
pub async fn serve(settings: Settings) -> Result<(), AppError> {
    let (snapshot, loaded) = build_snapshot(&settings)?;
    log_load(&snapshot, &loaded);
    let metrics = Arc::new(Metrics::new());
    metrics.record_policy_set(1, snapshot.policy_count());
    let token_cache = Arc::new(
        VerifiedTokenCache::new(settings.token_cache_entries, metrics.clone())
            .with_rejected_capacity(settings.rejected_token_cache_entries),
    );
    let tasks = Arc::new(Tasks::new());
    let keys = KeyStore::with_tasks(settings.fetch_limits(), metrics.clone(), token_cache.clone(), tasks.clone())
        .map(Arc::new)
        .map_err(|error| AppError::Serve { door: "jwks", message: error.to_string() })?;
    let revocations = revocations(&settings, &keys, &metrics)?;
    if let Some(revocations) = &revocations {
        revocations.spawn_tasks(&tasks);
    }
    let sso = sso(&settings, &keys, &metrics, revocations.as_ref())?;
    if let Some(sso) = &sso {
        sso.spawn_tasks(&tasks);
    }
    let remote_issuers = snapshot.remote_issuers();
    let issuers = keys.add_issuers(match &sso {
        Some(sso) => sso.with_provider_keys(remote_issuers),
        None => remote_issuers,
    });
    let trusted_proxies = http::trusted_proxies(&settings.trusted_proxies)
        .map_err(|message| AppError::Settings(SettingsError::TrustedProxies(message)))?;
    // Before any door opens: a token arriving meanwhile waits for these fetches, starts none.
    let first_fetches = keys.begin_fetch(&issuers);
    let api_keys = match &settings.api_keys {
        Some(block) => Some(Arc::new(ApiKeys::load(block.clone(), metrics.clone())?)),
        None => None,
    };
    let introspection = introspection(&settings, &metrics)?;
    // The data sources' live tables, empty until their feeds load them: lookups fail closed.
    let data = Arc::new(Store::default());
    let engine = Engine::new(snapshot, settings.clone(), metrics, keys.clone(), token_cache)
        .with_api_keys(api_keys)
        .with_introspection(introspection)
        .with_revocations(revocations)
        .with_data(data.clone());
    let engine = Arc::new(match sso {
        Some(sso) => engine.with_sso(sso),
        None => engine,
    });
    let feeds = feed_context(&settings, &tasks, engine.metrics())?;
    data.reconcile(&loaded.data_sources, &feeds);
    let ready = Arc::new(AtomicBool::new(false));

    let http_address = settings.http_mode.map(|_| settings.http_listen);
    let check_listeners = runtime::bind(settings.runtime, settings.grpc_listen, http_address)?;
    let admin_listener = bind("admin", settings.admin_listen).await?;
    let (shutdown_sender, shutdown) = watch::channel(false);
    // The admin door outlives the drain, so probes see `/readyz` answer 503 while checks finish.
    let (admin_shutdown_sender, admin_shutdown) = watch::channel(false);

    let health_reporter = tonic_health::server::HealthReporter::new();
    health_reporter.set_serving::<AuthorizationServer>().await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let limits = settings.connection_limits();
    let admin_state = Arc::new(AdminState::new(engine.clone(), ready.clone(), data.clone()));
    let admin_router = admin::router(admin_state);
    let admin =
        listener::serve(admin_listener, admin_router, limits, ConnectionSlots::new(limits), None, admin_shutdown);
    let http_router = settings.http_mode.map(|mode| {
        if mode == HttpMode::Auto {
            tracing::warn!(
                "HTTP door in `auto` mode: behind Envoy's HTTP mode a client's X-Original-URL or X-Original-URI chooses the judged path; set http_mode to the proxy in front"
            );
        }
        http::router(engine.clone(), trusted_proxies, mode)
    });
    if http_router.is_none() {
        tracing::info!(
            "HTTP door off: set http_mode to traefik, nginx, ingress-nginx or envoy (the proxy in front) to serve it"
        );
    }
    let doors = CheckDoors { engine: engine.clone(), health: health_reporter.clone(), http: http_router, limits };
    let serving = runtime::serve(&doors, check_listeners, &shutdown)
        .map_err(|error| AppError::Serve { door: "grpc/http", message: format!("cannot start a runtime: {error}") })?;
    let admin_task = tokio::spawn(admin);
    let ready_bound = Duration::from_secs(settings.jwks_ready_timeout_secs);
    drop(tasks.spawn("readiness", become_ready(keys, issuers, first_fetches, ready.clone(), ready_bound)));
    let reloader = Reloader::new(engine.clone(), data, feeds);
    let reload_shutdown = shutdown.clone();
    drop(tasks.spawn("policy reload", async move { reloader.watch(reload_shutdown).await }));

    shutdown_signal().await;
    ready.store(false, Ordering::Release);
    tracing::info!(
        checks_in_flight = engine.metrics().checks_in_flight(),
        "Shutting down: no longer ready, draining in-flight checks"
    );
    health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    health_reporter.set_not_serving::<AuthorizationServer>().await;
    let _ = shutdown_sender.send(true);

    let drain_timeout = Duration::from_secs(settings.drain_timeout_secs);
    let drained = tokio::time::timeout(drain_timeout, async {
        let checks_result = serving.drained().await;
        let _ = admin_shutdown_sender.send(true);
        let admin_result = admin_task.await;
        (checks_result, admin_result)
    })
    .await;
    let still_running = tasks.shutdown(TASKS_STOP_BOUND).await;
    if !still_running.is_empty() {
        tracing::warn!(?still_running, "Background tasks did not stop in time; exiting without them");
    }
    let flushing = engine.clone();
    let _ = tokio::task::spawn_blocking(move || flushing.traces().shutdown()).await;
    match drained {
        Ok((Ok(()), Ok(()))) => {
            tracing::info!("Stopped");
            Ok(())
        }
        Ok((checks, admin)) => {
            let message = format!("checks: {checks:?}, admin: {admin:?}");
            Err(AppError::Serve { door: "grpc/http/admin", message })
        }
        Err(_) => {
            tracing::warn!(timeout_secs = drain_timeout.as_secs(), "Drain timed out; exiting");
            Ok(())
        }
    }
}

/// Browser single sign-on, when the settings configure it: its provider's keys come from `keys`,
/// its session store's failures are counted in `metrics`.
fn sso(
    settings: &Settings,
    keys: &Arc<KeyStore>,
    metrics: &Arc<Metrics>,
    revocations: Option<&Arc<Revocations>>,
) -> Result<Option<Arc<Sso>>, AppError> {
    let Some(block) = &settings.sso else { return Ok(None) };
    let config = block
        .compile(|name| std::env::var(name).ok())
        .map_err(|errors| AppError::Settings(SettingsError::Sso { file: "settings".into(), errors }))?;
    let limits = settings.fetch_limits();
    let outbound = Outbound::new(OutboundLimits {
        timeout: limits.fetch_timeout,
        max_bytes: limits.max_bytes,
        allow_link_local: limits.allow_link_local,
    })
    .map_err(|error| AppError::Serve { door: "sso", message: error.to_string() })?;
    let sso =
        Sso::new(config, keys.clone(), outbound, settings.clock_skew_secs, settings.max_token_bytes, metrics.clone())
            .map_err(|message| AppError::Serve { door: "sso", message })?;
    Ok(Some(Arc::new(sso.with_revocations(revocations.cloned()))))
}

/// What the data sources' feeds run with: the background tasks, an HTTP client bounded as key
/// fetches are (its body cap set per feed), the metrics, and the policy files' poll interval.
fn feed_context(settings: &Settings, tasks: &Arc<Tasks>, metrics: &Arc<Metrics>) -> Result<FeedContext, AppError> {
    let limits = settings.fetch_limits();
    let outbound = Outbound::new(OutboundLimits {
        timeout: limits.fetch_timeout,
        max_bytes: limits.max_bytes,
        allow_link_local: limits.allow_link_local,
    })
    .map_err(|error| AppError::Serve { door: "data", message: error.to_string() })?;
    Ok(FeedContext {
        tasks: tasks.clone(),
        outbound,
        metrics: metrics.clone(),
        file_poll_interval: Duration::from_millis(settings.reload_poll_interval_ms),
    })
}

/// The revocation list, when the settings turn it on; its admin token and Redis password are
/// read here, before any port is bound.
fn revocations(
    settings: &Settings,
    keys: &Arc<KeyStore>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Revocations>>, AppError> {
    let Some(block) = settings.revocation.as_ref().filter(|block| block.enabled) else { return Ok(None) };
    let config = block.compile(|name| std::env::var(name).ok()).map_err(SettingsError::Revocation)?;
    let revocations =
        Revocations::new(config, keys.clone(), settings.clock_skew_secs, settings.max_token_bytes, metrics.clone())
            .map_err(|message| AppError::Serve { door: "revocation", message })?;
    Ok(Some(Arc::new(revocations)))
}

/// The introspection providers for opaque tokens, when the settings name any; their secrets are
/// read here, before any port is bound.
fn introspection(settings: &Settings, metrics: &Arc<Metrics>) -> Result<Option<Arc<Introspection>>, AppError> {
    let Some(block) = &settings.introspection else { return Ok(None) };
    let configs = block.compile(|name| std::env::var(name).ok()).map_err(SettingsError::Introspection)?;
    let limits = settings.fetch_limits();
    let limits = IntrospectionLimits {
        outbound: OutboundLimits {
            timeout: limits.fetch_timeout,
            max_bytes: limits.max_bytes,
            allow_link_local: limits.allow_link_local,
        },
        max_token_bytes: settings.max_token_bytes,
        max_remembered: settings.token_cache_entries,
    };
    let introspection = Introspection::new(configs, limits, metrics.clone())
        .map_err(|error| AppError::Serve { door: "introspection", message: error.to_string() })?;
    Ok(Some(Arc::new(introspection)))
}

/// Waits for the first fetch of every issuer's keys, then reports ready: once they finished, or
/// after `bound` when an IdP is slow (the fetch goes on). An issuer without keys does not keep
/// the whole gate down: its tokens get 401 `Jwks remote fetch is failed` and `/readyz` names
/// it. Then keeps keys fresh in the background.
async fn become_ready(
    keys: Arc<KeyStore>,
    issuers: Vec<Arc<str>>,
    first_fetches: impl Future<Output = ()>,
    ready: Arc<AtomicBool>,
    bound: Duration,
) {
    let _ = tokio::time::timeout(bound, first_fetches).await;
    let missing: Vec<String> = keys.missing().iter().map(ToString::to_string).collect();
    if !missing.is_empty() {
        tracing::warn!(?missing, "Ready without the keys of some issuers; retrying in the background");
    }
    for issuer in issuers {
        keys.keep_fresh(issuer);
    }
    ready.store(true, Ordering::Release);
    tracing::info!("Ready");
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
