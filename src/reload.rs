//! Policy reload: SIGHUP, or a change of the policy files (ConfigMap symlink swaps included), builds and checks the whole new set, fetches new issuers' keys, then swaps and drops the issuers it no longer names; a bad set is logged and counted, and the last good one stays. The API key files are watched and reloaded the same way.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::load::fingerprint;
use crate::data::{FeedContext, Store};
use crate::engine::Engine;
use crate::policy_set::{PolicySetError, SetSummary, build_snapshot, log_not_evaluated};

/// How long a reload may take to read and compile the policy files, and the change poller to
/// read them. A read stuck on a hung file system is abandoned (its thread ends when the read
/// does) and counted as a failed reload, so later reloads and SIGHUP still run.
const FILE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a job on a blocking thread gave no result.
#[derive(Debug, thiserror::Error)]
enum BlockingJobError {
    #[error("timed out after {} s reading the policy files", .0.as_secs())]
    TimedOut(Duration),
    #[error(transparent)]
    Failed(#[from] tokio::task::JoinError),
}

/// Runs `job` on a blocking thread and waits for it at most `bound`.
async fn run_blocking_within<T: Send + 'static>(
    bound: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlockingJobError> {
    match tokio::time::timeout(bound, tokio::task::spawn_blocking(job)).await {
        Ok(joined) => Ok(joined?),
        Err(_elapsed) => Err(BlockingJobError::TimedOut(bound)),
    }
}

/// Reloads one engine's policy set, one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    engine: Arc<Engine>,
    /// The live data; its feeds follow the data sources each new set declares.
    data: Arc<Store>,
    feeds: FeedContext,
    /// Held while a reload runs, so that reloads never overlap.
    reloading: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader that swaps new policy sets into `engine` and brings `data`'s feeds in line
    /// with the data sources they declare.
    pub fn new(engine: Arc<Engine>, data: Arc<Store>, feeds: FeedContext) -> Self {
        Self { engine, data, feeds, reloading: tokio::sync::Mutex::new(()) }
    }

    /// Rebuilds the policy set from the configured paths and swaps it in when it is valid.
    /// In-flight checks finish on the set they loaded. Returns the new generation.
    pub async fn reload(&self) -> Option<u64> {
        let _one_at_a_time = self.reloading.lock().await;
        let settings = self.engine.settings().clone();
        let built = run_blocking_within(FILE_READ_TIMEOUT, move || build_snapshot(&settings)).await;
        let (snapshot, loaded) = match built {
            Ok(Ok(built)) => built,
            Ok(Err(PolicySetError::Policies(errors))) => {
                for error in &errors {
                    tracing::error!(%error, "Policy reload rejected; the last good set stays");
                }
                self.engine.metrics().record_reload(false);
                return None;
            }
            Ok(Err(other)) => {
                tracing::error!(error = %other, "Policy reload rejected; the last good set stays");
                self.engine.metrics().record_reload(false);
                return None;
            }
            Err(error) => {
                tracing::error!(%error, "Policy reload failed; the last good set stays");
                self.engine.metrics().record_reload(false);
                return None;
            }
        };
        let mut remote_issuers = snapshot.remote_issuers();
        if let Some(sso) = self.engine.sso() {
            remote_issuers = sso.with_provider_keys(remote_issuers);
        }
        let named: Vec<Arc<str>> = remote_issuers.iter().map(|remote| remote.issuer.clone()).collect();
        let added = self.engine.keys().add_issuers(remote_issuers);
        if !added.is_empty() {
            // The new issuers' keys before the swap, so their first tokens are not refused.
            let bound = Duration::from_secs(self.engine.settings().jwks_ready_timeout_secs);
            let _ = tokio::time::timeout(bound, self.engine.keys().fetch(&added)).await;
            for issuer in added {
                self.engine.keys().keep_fresh(issuer);
            }
        }
        let summary = SetSummary::of(&snapshot, &loaded);
        let generation = self.engine.swap(snapshot);
        // After the swap: checks of the old set may still use their keys until then.
        self.engine.keys().retain_issuers(&named);
        self.data.reconcile(&loaded.data_sources, &self.feeds);
        self.engine.metrics().record_policy_set(generation, summary.authorization_policies);
        self.engine.metrics().record_reload(true);
        log_not_evaluated(&loaded);
        tracing::info!(
            generation,
            files = summary.files,
            authorization_policies = summary.authorization_policies,
            custom_policies = summary.custom_policies,
            request_authentications = summary.request_authentications,
            "Reloaded the policy set"
        );
        Some(generation)
    }

    /// Reads the API key files again and swaps the new table in; a broken file keeps the last
    /// good table (and is logged `file:line`).
    async fn reload_api_keys(&self) {
        let Some(api_keys) = self.engine.api_keys().cloned() else { return };
        if let Err(error) = run_blocking_within(FILE_READ_TIMEOUT, move || api_keys.reload()).await {
            tracing::error!(%error, "API key reload failed; the last good keys stay");
        }
    }

    /// Reloads on SIGHUP, and when the policy files or the API key files change (checked
    /// every `reload_poll_interval_ms`), until shutdown.
    pub async fn watch(&self, mut shutdown: watch::Receiver<bool>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGHUP; reload by file changes only");
                None
            }
        };
        let interval = Duration::from_millis(self.engine.settings().reload_poll_interval_ms);
        let mut last = current_fingerprint(&self.engine).await;
        let mut last_keys = api_key_fingerprint(&self.engine).await;
        loop {
            let sighup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let poll = async {
                if interval.is_zero() { std::future::pending::<()>().await } else { tokio::time::sleep(interval).await }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup => {
                    tracing::info!("SIGHUP: reloading the policy set");
                    last = current_fingerprint(&self.engine).await;
                    self.reload().await;
                    last_keys = api_key_fingerprint(&self.engine).await;
                    self.reload_api_keys().await;
                }
                () = poll => {
                    let now = current_fingerprint(&self.engine).await;
                    if now != last {
                        last = now;
                        tracing::info!("Policy files changed: reloading the policy set");
                        self.reload().await;
                    }
                    let keys_now = api_key_fingerprint(&self.engine).await;
                    if keys_now != last_keys {
                        last_keys = keys_now;
                        tracing::info!("API key files changed: reloading the API keys");
                        self.reload_api_keys().await;
                    }
                }
            }
        }
    }
}

async fn current_fingerprint(engine: &Engine) -> Option<[u8; 32]> {
    let paths = engine.settings().policies.clone();
    run_blocking_within(FILE_READ_TIMEOUT, move || fingerprint(&paths)).await.ok()
}

/// The digest of the API key files, as of the policy files; `None` without API keys.
async fn api_key_fingerprint(engine: &Engine) -> Option<[u8; 32]> {
    let paths = engine.api_keys()?.paths().to_vec();
    run_blocking_within(FILE_READ_TIMEOUT, move || fingerprint(&paths)).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blocking_job_that_never_returns_is_reported_as_timed_out() {
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let outcome = run_blocking_within(Duration::from_millis(50), move || stuck.recv()).await;
        assert!(matches!(outcome, Err(BlockingJobError::TimedOut(_))), "{outcome:?}");
        // Lets the abandoned thread end, so the runtime can shut down.
        drop(release);
    }

    #[tokio::test]
    async fn a_blocking_job_within_the_bound_gives_its_result() {
        let outcome = run_blocking_within(Duration::from_secs(60), || 7).await;
        assert_eq!(outcome.ok(), Some(7));
    }
}
