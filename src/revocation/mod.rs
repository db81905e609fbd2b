//! Revocations in force on this replica: the core's list behind one atomic pointer (a check loads it, never waits), added to by the admin endpoint and back-channel logouts, shared with every replica through Redis when configured; never decides a check (the core matches), never logs a name it revokes.

pub mod admin;
pub mod back_channel;
pub mod settings;
mod shared;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use self::settings::RevocationConfig;
use self::shared::SharedList;
use crate::core::Identity;
use crate::core::authn::Authentication;
use crate::core::revocation::{Addition, Entry, RevocationList};
use crate::identity::jwks::KeyStore;
use crate::sso::replay::SeenTokenIds;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// How often expired entries are dropped, and additions Redis could not take are offered again.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Back-channel logout token ids one replica remembers (without Redis).
const MAX_LOGOUT_TOKENS_REMEMBERED: usize = 10_000;

/// Where an addition came from, for `portcullis_revocation_additions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /revocations` on the admin door.
    Admin,
    /// A back-channel logout token of a bearer-token issuer.
    BackChannel,
    /// A back-channel logout token of the browser sign-on's provider.
    SsoLogout,
}

impl Source {
    /// Every source, in declaration order.
    pub const ALL: [Source; 3] = [Self::Admin, Self::BackChannel, Self::SsoLogout];

    /// The source's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::BackChannel => "back_channel",
            Self::SsoLogout => "sso_logout",
        }
    }
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// The revocation list of this replica, and how it is fed and shared.
#[derive(Debug)]
pub struct Revocations {
    list: ArcSwap<RevocationList>,
    /// Writers copy the list, change the copy and swap it in, one at a time.
    writing: Mutex<()>,
    config: RevocationConfig,
    shared: Option<SharedList>,
    /// The logout tokens taken, when there is no Redis to remember them across replicas.
    seen_logout_tokens: SeenTokenIds,
    keys: Arc<KeyStore>,
    clock_skew_secs: u64,
    max_token_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Revocations {
    /// The list `config` describes, empty until fed (or synchronised from Redis); logout tokens
    /// are verified with the issuers' keys from `keys`. An error says why Redis cannot be used.
    pub fn new(
        config: RevocationConfig,
        keys: Arc<KeyStore>,
        clock_skew_secs: u64,
        max_token_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let shared = config.redis.as_ref().map(SharedList::new).transpose()?;
        Ok(Self {
            list: ArcSwap::from_pointee(RevocationList::new(config.max_entries)),
            writing: Mutex::new(()),
            config,
            shared,
            seen_logout_tokens: SeenTokenIds::new(MAX_LOGOUT_TOKENS_REMEMBERED),
            keys,
            clock_skew_secs,
            max_token_bytes,
            metrics,
        })
    }

    /// `authentication`, or its refusal as revoked when an entry names its token; counted.
    pub fn screen<'r>(&self, authentication: Authentication<'r>, now: u64) -> Authentication<'r> {
        let screened = self.list.load().screen(authentication, now);
        if matches!(screened, Authentication::Failed { error: crate::core::jwt::JwtError::Revoked }) {
            self.metrics.record_revocation_refusal();
        }
        screened
    }

    /// Whether an entry revokes the browser session whose login gave `identity`; counted.
    pub fn revokes_session(&self, identity: &Identity, now: u64) -> bool {
        let revoked = self.list.load().revokes_identity(identity, now);
        if revoked {
            self.metrics.record_revocation_refusal();
        }
        revoked
    }

    /// Adds `entry` here at once, then writes it to Redis and announces it to every replica;
    /// true when it was shared (or there is no Redis). An addition Redis could not take stays in
    /// force here and is offered again until Redis takes it.
    pub async fn add(&self, entry: Entry, source: Source) -> bool {
        self.metrics.record_revocation_addition(source);
        self.apply(&[entry]);
        match &self.shared {
            Some(shared) => shared.publish(entry, &self.metrics).await,
            None => true,
        }
    }

    /// Adds every entry of `entries` to the local list in one swap.
    fn apply(&self, entries: &[Entry]) {
        let now = unix_now();
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list = RevocationList::clone(&self.list.load());
        list.purge_expired(now);
        for entry in entries {
            if let Addition::AddedEvicting(evicted) = list.add(*entry, now) {
                self.metrics.record_revocation_eviction();
                tracing::error!(
                    max_entries = self.config.max_entries,
                    evicted_kind = evicted.kind.as_str(),
                    evicted_expires_at = evicted.expires_at,
                    "The revocation list is full: dropped the entry that would expire first; raise revocation.max_entries"
                );
            }
        }
        self.metrics.record_revocation_entries(list.len());
        self.list.store(Arc::new(list));
    }

    /// Drops the entries no longer in force.
    fn purge_expired(&self) {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list = RevocationList::clone(&self.list.load());
        if list.purge_expired(unix_now()) > 0 {
            self.metrics.record_revocation_entries(list.len());
            self.list.store(Arc::new(list));
        }
    }

    /// How many entries are in force, and up to `limit` of them, those ending last first.
    pub fn entries(&self, limit: usize) -> (usize, Vec<Entry>) {
        let list = self.list.load();
        let now = unix_now();
        let mut entries: Vec<Entry> = list.entries().filter(|entry| entry.expires_at > now).collect();
        let total = entries.len();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.expires_at));
        entries.truncate(limit);
        (total, entries)
    }

    /// Seconds since this replica last knew it held every replica's additions: 0 without Redis
    /// or while its listener is subscribed; since start-up when Redis was never reached.
    pub fn age_seconds(&self) -> f64 {
        self.shared.as_ref().map_or(0.0, SharedList::age_seconds)
    }

    /// What the admin endpoints and back-channel logouts need of the settings.
    pub fn config(&self) -> &RevocationConfig {
        &self.config
    }

    /// The issuers' key store, for logout tokens.
    fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Starts the background work: dropping expired entries, and with Redis the listener that
    /// resynchronises in full at every (re)connect and takes every replica's additions.
    pub fn spawn_tasks(self: &Arc<Self>, tasks: &Tasks) {
        let maintained = self.clone();
        drop(tasks.spawn("revocation maintenance", async move {
            let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
            loop {
                ticks.tick().await;
                maintained.purge_expired();
                if let Some(shared) = &maintained.shared {
                    shared.offer_pending(&maintained.metrics).await;
                }
            }
        }));
        if self.shared.is_some() {
            let listening = self.clone();
            drop(tasks.spawn("revocation listener", async move {
                if let Some(shared) = &listening.shared {
                    shared.listen(&listening).await;
                }
            }));
        }
    }
}
