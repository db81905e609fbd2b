//! The revocation list shared through Redis: every entry in one sorted set scored by its expiry, each addition announced on a pub/sub channel, a full resynchronisation at every (re)connect, additions Redis could not take offered again; a check never waits for any of it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::settings::RevocationRedisConfig;
use super::{Revocations, unix_now};
use crate::core::revocation::Entry;
use crate::redis_link::{RedisLink, Subscriber};
use crate::sso::replay::HashedName;
use crate::telemetry::Metrics;

/// Additions kept for Redis while it cannot be reached; more drop the oldest (still in force
/// here; the others get them at the next addition's resynchronisation only if Redis took them).
const MAX_PENDING: usize = 100_000;

/// Whether this replica holds every replica's additions.
#[derive(Debug)]
struct SyncState {
    /// The listener is subscribed and the list was read in full since.
    in_sync: bool,
    /// When the replica last knew it was in sync (start-up, before the first sync).
    since: Instant,
    /// A loss was logged since the last sync: the next ones are only counted.
    loss_logged: bool,
}

/// The Redis side of the list.
#[derive(Debug)]
pub(super) struct SharedList {
    link: RedisLink,
    config: RevocationRedisConfig,
    state: Mutex<SyncState>,
    /// Additions Redis did not take yet.
    pending: Mutex<Vec<Entry>>,
}

/// An entry as announced: its member text and its expiry.
fn message_of(entry: &Entry) -> String {
    format!("{} {}", entry.to_member(), entry.expires_at)
}

/// The entry an announcement names.
fn entry_of(message: &str) -> Option<Entry> {
    let (member, expires_at) = message.split_once(' ')?;
    Entry::from_member(member, expires_at.parse().ok()?)
}

impl SharedList {
    /// The list on the server `config` names, not yet connected.
    pub(super) fn new(config: &RevocationRedisConfig) -> Result<Self, String> {
        let password = config.password.as_ref().map(super::settings::Password::expose);
        let link = RedisLink::new(&config.url, password, config.timeout)?;
        let state = SyncState { in_sync: false, since: Instant::now(), loss_logged: false };
        Ok(Self { link, config: config.clone(), state: Mutex::new(state), pending: Mutex::new(Vec::new()) })
    }

    /// Writes `entry` to Redis and announces it; kept for later, and false, when Redis cannot
    /// take it now.
    pub(super) async fn publish(&self, entry: Entry, metrics: &Metrics) -> bool {
        match self.write(&[entry]).await {
            Ok(()) => true,
            Err(cause) => {
                metrics.record_revocation_sync_error();
                tracing::warn!(%cause, "Cannot share a revocation through Redis; in force on this replica, offered again");
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                if pending.len() >= MAX_PENDING {
                    pending.remove(0);
                }
                pending.push(entry);
                false
            }
        }
    }

    /// Offers Redis the additions it could not take before.
    pub(super) async fn offer_pending(&self, metrics: &Metrics) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if pending.is_empty() {
            return;
        }
        match self.write(&pending).await {
            Ok(()) => tracing::info!(entries = pending.len(), "Shared the revocations Redis could not take before"),
            Err(_) => {
                metrics.record_revocation_sync_error();
                let mut kept = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let newer = std::mem::replace(&mut *kept, pending);
                kept.extend(newer);
            }
        }
    }

    /// Adds `entries` to the sorted set (keeping the later expiry of a member held already),
    /// announces each, and drops the members that expired.
    async fn write(&self, entries: &[Entry]) -> Result<(), String> {
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for entry in entries {
            pipeline
                .cmd("ZADD")
                .arg(&*self.config.entries_key)
                .arg("GT")
                .arg(entry.expires_at)
                .arg(entry.to_member())
                .ignore();
            pipeline.cmd("PUBLISH").arg(&*self.config.channel).arg(message_of(entry)).ignore();
        }
        pipeline.cmd("ZREMRANGEBYSCORE").arg(&*self.config.entries_key).arg("-inf").arg(unix_now()).ignore();
        let mut connection = self.link.connection.clone();
        self.link.bounded(pipeline.query_async::<()>(&mut connection)).await
    }

    /// Every entry Redis holds that is still in force.
    async fn read_all(&self) -> Result<Vec<Entry>, String> {
        let mut connection = self.link.connection.clone();
        let command = redis::cmd("ZRANGEBYSCORE")
            .arg(&*self.config.entries_key)
            .arg(format!("({}", unix_now()))
            .arg("+inf")
            .arg("WITHSCORES")
            .clone();
        let members: Vec<(String, u64)> = self.link.bounded(command.query_async(&mut connection)).await?;
        Ok(members.iter().filter_map(|(member, expires_at)| Entry::from_member(member, *expires_at)).collect())
    }

    /// True the first time the logout token `id` is offered within `window`, on any replica.
    pub(super) async fn first_use_of_logout_token(&self, id: &HashedName, window: Duration) -> Result<bool, String> {
        let mut connection = self.link.connection.clone();
        let key = format!("{}{}", self.config.logout_token_prefix, id.to_hex());
        let command = redis::cmd("SET").arg(key).arg(1).arg("NX").arg("EX").arg(window.as_secs().max(1)).clone();
        let created: Option<String> = self.link.bounded(command.query_async(&mut connection)).await?;
        Ok(created.is_some())
    }

    /// Listens for every replica's additions into `revocations` until cancelled.
    pub(super) async fn listen(&self, revocations: &Revocations) {
        self.link.listen(&self.config.channel, &Listener { shared: self, revocations }).await;
    }

    /// Seconds since the replica last knew it was in sync; 0 while it is.
    pub(super) fn age_seconds(&self) -> f64 {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.in_sync { 0.0 } else { state.since.elapsed().as_secs_f64() }
    }

    /// Records whether the replica is in sync now; true when a loss is to be logged (the first
    /// since the last sync).
    fn set_in_sync(&self, in_sync: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.in_sync {
            // Still sure of every addition until this very moment.
            state.since = Instant::now();
        }
        state.in_sync = in_sync;
        let log_loss = !in_sync && !state.loss_logged;
        state.loss_logged = !in_sync;
        log_loss
    }
}

/// The pub/sub side of one listener.
struct Listener<'l> {
    shared: &'l SharedList,
    revocations: &'l Revocations,
}

impl Subscriber for Listener<'_> {
    async fn subscribed(&self) -> Result<(), String> {
        self.shared.offer_pending(&self.revocations.metrics).await;
        let entries = self.shared.read_all().await?;
        self.revocations.apply(&entries);
        self.shared.set_in_sync(true);
        tracing::info!(entries = entries.len(), "Synchronised the revocation list from Redis");
        Ok(())
    }

    fn message(&self, payload: &str) {
        if let Some(entry) = entry_of(payload) {
            self.revocations.apply(&[entry]);
        }
    }

    fn lost(&self, cause: String) {
        self.revocations.metrics.record_revocation_sync_error();
        if self.shared.set_in_sync(false) {
            tracing::warn!(%cause, "Cannot reach the revocation list's Redis; the list held here stays in force");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_names_the_entry_it_was_made_of() {
        let entry = Entry::subject_before("https://idp", "alice", 5, 10);
        assert_eq!(entry_of(&message_of(&entry)), Some(entry));
        for bad in ["", "sub:00", "jti:00000000000000000000000000000000 x", "jti:00000000000000000000000000000000"] {
            assert_eq!(entry_of(bad), None, "{bad}");
        }
    }
}
