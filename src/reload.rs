//! Policy reload: SIGHUP, or a change of the policy files (ConfigMap symlink swaps included), builds and checks the whole new set, fetches new issuers' keys, then swaps; a bad set is logged and counted, and the last good one stays.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::{AppError, AppState, LivePolicies, build_snapshot};
use crate::config::load::fingerprint;

/// Rebuilds the policy set from the configured paths and swaps it in when it is valid.
/// In-flight checks finish on the set they loaded. Returns the new generation.
pub async fn reload(state: &Arc<AppState>) -> Option<u64> {
    let _one_at_a_time = state.reloading.lock().await;
    let settings = state.settings.clone();
    let built = tokio::task::spawn_blocking(move || build_snapshot(&settings)).await;
    let (snapshot, loaded) = match built {
        Ok(Ok(built)) => built,
        Ok(Err(AppError::Policies(errors))) => {
            for error in &errors {
                tracing::error!(%error, "Policy reload rejected; the last good set stays");
            }
            state.metrics.record_reload(false);
            return None;
        }
        Ok(Err(other)) => {
            tracing::error!(error = %other, "Policy reload rejected; the last good set stays");
            state.metrics.record_reload(false);
            return None;
        }
        Err(join_error) => {
            tracing::error!(error = %join_error, "Policy reload failed; the last good set stays");
            state.metrics.record_reload(false);
            return None;
        }
    };
    let added = state.keys.add_issuers(snapshot.remote_issuers());
    if !added.is_empty() {
        // The new issuers' keys before the swap, so their first tokens are not refused.
        let bound = Duration::from_secs(state.settings.jwks_ready_timeout_secs);
        let _ = tokio::time::timeout(bound, state.keys.fetch(&added)).await;
        for issuer in added {
            state.keys.keep_fresh(issuer);
        }
    }
    let generation = state.policies.load().generation + 1;
    let policies = snapshot.policy_count();
    state.policies.store(Arc::new(LivePolicies { snapshot, generation }));
    state.metrics.record_policy_set(generation, policies);
    state.metrics.record_reload(true);
    tracing::info!(generation, policies, files = loaded.files, "Reloaded the policy set");
    Some(generation)
}

/// Reloads on SIGHUP, and when the policy files change (checked every
/// `reload_poll_interval_ms`), until shutdown.
pub async fn watch(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "Cannot listen for SIGHUP; reload by file changes only");
            None
        }
    };
    let interval = Duration::from_millis(state.settings.reload_poll_interval_ms);
    let mut last = current_fingerprint(&state).await;
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
                last = current_fingerprint(&state).await;
                reload(&state).await;
            }
            () = poll => {
                let now = current_fingerprint(&state).await;
                if now != last {
                    last = now;
                    tracing::info!("Policy files changed: reloading the policy set");
                    reload(&state).await;
                }
            }
        }
    }
}

async fn current_fingerprint(state: &Arc<AppState>) -> Option<[u8; 32]> {
    let paths = state.settings.policies.clone();
    tokio::task::spawn_blocking(move || fingerprint(&paths)).await.ok()
}
