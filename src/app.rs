//! Composition root: first policy set, listeners, the gRPC, HTTP and admin servers, reload, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::config::ConfigError;
use crate::config::load::{LoadedPolicies, SkippedDocument, load_policies};
use crate::core::Snapshot;
use crate::engine::Engine;
use crate::grpc::{AuthorizationServer, CheckService};
use crate::jwks::KeyStore;
use crate::settings::{HttpMode, Settings, SettingsError};
use crate::telemetry::Metrics;
use crate::token_cache::VerifiedTokenCache;
use crate::{admin, http, reload};

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{}", render_config_errors(.0))]
    Policies(Vec<ConfigError>),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot listen on {address} ({door}): {source}")]
    Bind { door: &'static str, address: SocketAddr, source: std::io::Error },
    #[error("{door} server failed: {message}")]
    Serve { door: &'static str, message: String },
}

fn render_config_errors(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{}\n{} problem(s) in the policy set", lines.join("\n"), errors.len())
}

/// State shared by the admin door and reload; checks go through the engine.
#[derive(Debug)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// False until the first policy set is live and every issuer's keys were fetched once (or
    /// the wait for them ran out), and again once shutdown starts.
    pub ready: AtomicBool,
    /// Held while a reload runs, so that reloads never overlap.
    pub reloading: tokio::sync::Mutex<()>,
}

/// Loads and compiles the policy set the settings name.
pub fn build_snapshot(settings: &Settings) -> Result<(Snapshot, LoadedPolicies), AppError> {
    build_snapshot_with(settings, |_| {})
}

/// [`build_snapshot`], `prepare` changing the loaded policies first (`portcullis test` gives
/// issuers the keys its test file declares).
pub fn build_snapshot_with(
    settings: &Settings,
    prepare: impl FnOnce(&mut LoadedPolicies),
) -> Result<(Snapshot, LoadedPolicies), AppError> {
    let mut loaded = load_policies(&settings.policies).map_err(AppError::Policies)?;
    prepare(&mut loaded);
    let workloads = settings.workload_table()?;
    let policies = std::mem::take(&mut loaded.policies);
    let authn = std::mem::take(&mut loaded.authn);
    let snapshot = Snapshot::new(policies, authn, workloads, settings.engine_options(), &settings.root_namespace);
    if let Some(message) = snapshot.conflicting_key_sources() {
        let file = settings.policies.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(AppError::Policies(vec![ConfigError { file: file.into(), line: 0, message }]));
    }
    Ok((snapshot, loaded))
}

/// Logs what a loaded set holds but does not evaluate: skipped documents and CUSTOM policies.
/// At start-up and on every reload, so a document that stops counting is never silent.
pub fn log_not_evaluated(loaded: &LoadedPolicies) {
    for skipped in &loaded.skipped {
        let SkippedDocument { location, kind, reason } = skipped;
        tracing::warn!(%location, %kind, %reason, "Skipped a document");
    }
    for id in &loaded.custom {
        tracing::info!(policy = %id, "CUSTOM policy routes traffic here; not evaluated");
    }
}

/// What a loaded policy set holds, counted the same way wherever it is reported (`validate`
/// prints it, `serve` logs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetSummary {
    pub files: usize,
    /// AuthorizationPolicies evaluated here: ALLOW, DENY and AUDIT ones.
    pub authorization_policies: usize,
    /// CUSTOM AuthorizationPolicies: accepted, not evaluated (they route traffic here).
    pub custom_policies: usize,
    pub request_authentications: usize,
}

impl SetSummary {
    pub fn of(snapshot: &Snapshot, loaded: &LoadedPolicies) -> Self {
        Self {
            files: loaded.files,
            authorization_policies: snapshot.policy_count(),
            custom_policies: loaded.custom.len(),
            request_authentications: snapshot.authn_count(),
        }
    }
}

impl std::fmt::Display for SetSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files: {} AuthorizationPolicies (and {} CUSTOM), {} RequestAuthentications",
            self.files, self.authorization_policies, self.custom_policies, self.request_authentications
        )
    }
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

/// Runs the server until SIGTERM or Ctrl-C. An invalid policy set fails before any port is bound.
pub async fn serve(settings: Settings) -> Result<(), AppError> {
    let (snapshot, loaded) = build_snapshot(&settings)?;
    log_load(&snapshot, &loaded);
    let metrics = Arc::new(Metrics::new());
    metrics.record_policy_set(1, snapshot.policy_count());
    let token_cache = Arc::new(VerifiedTokenCache::new(settings.token_cache_entries, metrics.clone()));
    let keys = KeyStore::new(settings.fetch_limits(), metrics.clone(), token_cache.clone())
        .map_err(|error| AppError::Serve { door: "jwks", message: error.to_string() })?;
    keys.add_issuers(snapshot.remote_issuers());
    let trusted_proxies = http::trusted_proxies(&settings.trusted_proxies)
        .map_err(|message| AppError::Settings(SettingsError::TrustedProxies(message)))?;
    let engine = Arc::new(Engine::new(snapshot, settings.clone(), metrics, Arc::new(keys), token_cache));
    let state = Arc::new(AppState {
        engine: engine.clone(),
        ready: AtomicBool::new(false),
        reloading: tokio::sync::Mutex::new(()),
    });

    let grpc_listener = bind("grpc", settings.grpc_listen).await?;
    let http_listener = match settings.http_mode {
        Some(mode) => Some((bind("http", settings.http_listen).await?, mode)),
        None => None,
    };
    let admin_listener = bind("admin", settings.admin_listen).await?;
    let (shutdown_sender, shutdown) = watch::channel(false);
    // The admin door outlives the drain, so probes see `/readyz` answer 503 while checks finish.
    let (admin_shutdown_sender, admin_shutdown) = watch::channel(false);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AuthorizationServer>().await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(CheckService::new(engine.clone())))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, Nagle's algorithm meets delayed ACKs: ~40 ms per answer.
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            wait_for(shutdown.clone()),
        );
    let limits = settings.connection_limits();
    let admin = http::listener::serve(admin_listener, admin::router(state.clone()), limits, admin_shutdown);
    let http_door = http_listener.map(|(listener, mode)| {
        if mode == HttpMode::Auto {
            tracing::warn!(
                "HTTP door in `auto` mode: behind Envoy's HTTP mode a client's X-Original-URL or X-Original-URI chooses the judged path; set http_mode to the proxy in front"
            );
        }
        http::listener::serve(listener, http::router(engine.clone(), trusted_proxies, mode), limits, shutdown.clone())
    });
    if http_door.is_none() {
        tracing::info!(
            "HTTP door off: set http_mode to traefik, nginx, ingress-nginx or envoy (the proxy in front) to serve it"
        );
    }
    let http_task = tokio::spawn(async move {
        if let Some(http_door) = http_door {
            http_door.await;
        }
    });
    let grpc_task = tokio::spawn(grpc);
    let admin_task = tokio::spawn(admin);
    tokio::spawn(become_ready(state.clone(), Duration::from_secs(settings.jwks_ready_timeout_secs)));
    tokio::spawn(reload::watch(state.clone(), shutdown.clone()));

    shutdown_signal().await;
    state.ready.store(false, Ordering::Release);
    tracing::info!(
        checks_in_flight = state.engine.metrics().checks_in_flight(),
        "Shutting down: no longer ready, draining in-flight checks"
    );
    health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    health_reporter.set_not_serving::<AuthorizationServer>().await;
    let _ = shutdown_sender.send(true);

    let drain_timeout = Duration::from_secs(settings.drain_timeout_secs);
    let drained = tokio::time::timeout(drain_timeout, async {
        let grpc_result = grpc_task.await;
        let http_result = http_task.await;
        let _ = admin_shutdown_sender.send(true);
        let admin_result = admin_task.await;
        (grpc_result, http_result, admin_result)
    })
    .await;
    let flushing = state.clone();
    let _ = tokio::task::spawn_blocking(move || flushing.engine.traces().shutdown()).await;
    match drained {
        Ok((Ok(Ok(())), Ok(()), Ok(()))) => {
            tracing::info!("Stopped");
            Ok(())
        }
        Ok((grpc, http, admin)) => {
            let message = format!("grpc: {grpc:?}, http: {http:?}, admin: {admin:?}");
            Err(AppError::Serve { door: "grpc/http/admin", message })
        }
        Err(_) => {
            tracing::warn!(timeout_secs = drain_timeout.as_secs(), "Drain timed out; exiting");
            Ok(())
        }
    }
}

/// Tries every issuer's keys once, then reports ready: after the first attempts finished, or
/// after `bound` when an IdP is slow. An issuer without keys does not keep the whole gate down:
/// its tokens get 401 `Jwks remote fetch is failed` and `/readyz` names it. Then keeps keys
/// fresh in the background.
async fn become_ready(state: Arc<AppState>, bound: Duration) {
    let keys = state.engine.keys().clone();
    let issuers = keys.issuer_names();
    let _ = tokio::time::timeout(bound, keys.fetch(&issuers)).await;
    let missing: Vec<String> = keys.missing().iter().map(ToString::to_string).collect();
    if !missing.is_empty() {
        tracing::warn!(?missing, "Ready without the keys of some issuers; retrying in the background");
    }
    for issuer in issuers {
        keys.keep_fresh(issuer);
    }
    state.ready.store(true, Ordering::Release);
    tracing::info!("Ready");
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
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
