//! The Redis session store, shared by every replica: sessions (with the provider's tokens) and logins under way sealed under the SHA-256 of their id, the lock that lets one replica at a time refresh a session's tokens, an index from the provider's hashed session ids and subjects to the sessions (for back-channel logout), the logout tokens already used, a short-lived local copy per replica, ended sessions announced on a pub/sub channel, and a bounded grace for local copies while Redis cannot be reached; never writes a session id, token, key or password to Redis in clear, nor to a log line or a metric.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands as _, RedisResult};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::config::{RedisConfig, RedisPassword};
use super::envelope::KeyRing;
use super::replay::HashedName;
use super::session::{IdTokenHint, ProviderTokens, Session};
use super::sessions::{ProviderNames, SessionEnd};
use super::store::{HashedId, SessionId, SessionStore, StoreError, StoreLimits};
use crate::core::id_token::{SessionClaims, StoredLogin};
use crate::redis_link::{RedisLink, Subscriber};
use crate::telemetry::Metrics;

/// Fresh ids tried when one is taken already (256 random bits: never, in practice).
const ID_ATTEMPTS: usize = 3;
/// Rewrites a session (`ARGV[2]`, TTL `ARGV[3]` seconds) only while it still holds the value read
/// before (`ARGV[1]`): 0 when it is gone, 2 when it changed meanwhile (new tokens another
/// replica wrote stay), 1 when written.
const TOUCH_SCRIPT: &str = "local current = redis.call('GET', KEYS[1]) \
     if not current then return 0 end \
     if current ~= ARGV[1] then return 2 end \
     redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) return 1";
/// Deletes a refresh lock only while it holds the value of the replica giving it back.
const RELEASE_LOCK_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// The stored last use is rewritten at most this often per session and replica, so that
/// sessions in use cost no Redis write per check.
const IDLE_REFRESH_MAX: Duration = Duration::from_secs(60);

/// What Redis holds of a session, sealed.
#[derive(Debug, Deserialize)]
struct StoredSession {
    login: StoredLogin,
    /// Seconds since the epoch.
    opened: u64,
    /// Seconds since the epoch, rewritten at most every [`IDLE_REFRESH_MAX`].
    last_used: u64,
    /// The login's ID token (absent in sessions stored before it was kept).
    #[serde(default)]
    id_token: Option<String>,
    /// The name of the provider of the login (absent in sessions stored before it was kept).
    #[serde(default)]
    provider: Option<String>,
    /// The provider's tokens (absent in sessions stored before they were kept).
    #[serde(default)]
    tokens: Option<ProviderTokens>,
    /// The value as read, to rewrite it only while it is unchanged.
    #[serde(skip)]
    sealed: Vec<u8>,
}

/// A login under way, as Redis holds it (sealed as a session is, under the hash of its `state`),
/// so that its callback may reach any replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLoginTransaction {
    /// The value of the login's own cookie.
    pub binding: String,
    /// The nonce its ID token must carry.
    pub nonce: String,
    /// Its PKCE verifier.
    pub code_verifier: String,
    /// Where it ends, as checked at its start (checked again when read back).
    pub return_to: String,
    /// The name of the provider it started with.
    #[serde(default)]
    pub provider: String,
}

/// A replica's copy of a session it read from Redis.
#[derive(Debug)]
struct LocalCopy {
    session: Arc<Session>,
    read_at: Instant,
    opened: u64,
    last_used: u64,
}

/// A session's idle and absolute lifetimes, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A session not used this long ends.
    pub idle_secs: u64,
    /// A session ends this long after it was opened.
    pub max_secs: u64,
}

impl Lifetimes {
    /// Seconds the session opened at `opened` and last used at `last_used` has left at `now`:
    /// the earlier of its two ends; zero once it ended.
    fn remaining(&self, opened: u64, last_used: u64, now: u64) -> u64 {
        let end = opened.saturating_add(self.max_secs).min(last_used.saturating_add(self.idle_secs));
        end.saturating_sub(now)
    }

    /// Which lifetime ended a session that has none left.
    fn ended_by(&self, opened: u64, now: u64) -> SessionEnd {
        if now >= opened.saturating_add(self.max_secs) { SessionEnd::MaxLifetime } else { SessionEnd::Idle }
    }

    /// How stale the stored last use may get before a read rewrites it.
    fn refresh_after_secs(&self) -> u64 {
        (self.idle_secs / 4).clamp(1, IDLE_REFRESH_MAX.as_secs())
    }
}

/// What is wrong with the store now, for `/readyz`: the last command's failure, the listener's.
#[derive(Debug, Default)]
struct Health {
    command: Option<String>,
    listener: Option<String>,
}

/// What a health report is about.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// The commands: reads, writes, deletes.
    Command,
    /// The pub/sub listener.
    Listener,
}

/// The sessions of every replica, in Redis.
pub struct RedisSessions {
    connection: ConnectionManager,
    link: RedisLink,
    keys: Arc<KeyRing>,
    key_prefix: Box<str>,
    channel: Box<str>,
    local_copy: Duration,
    timeout: Duration,
    lifetimes: Lifetimes,
    copies: SessionStore<LocalCopy, HashedId>,
    health: Mutex<Health>,
    metrics: Arc<Metrics>,
    random: SystemRandom,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions").field("copies", &self.copies.len()).finish_non_exhaustive()
    }
}

/// Seconds since the epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

impl RedisSessions {
    /// A store on the server `config` names (connected on first use, and again after every
    /// failure), keeping at most `max_copies` local copies; store failures are counted in `metrics`.
    pub fn new(
        config: &RedisConfig,
        lifetimes: Lifetimes,
        max_copies: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let password = config.password.as_ref().map(RedisPassword::expose);
        let link = RedisLink::new(&config.url, password, config.timeout)?;
        // A copy is kept through the outage grace after its last read; within `local_copy` it
        // is used without asking Redis.
        let kept = config.outage_grace.max(config.local_copy);
        let copies =
            SessionStore::new(StoreLimits { idle_timeout: kept, max_lifetime: kept, max_sessions: max_copies });
        Ok(Self {
            connection: link.connection.clone(),
            link,
            keys: config.keys.clone(),
            key_prefix: config.key_prefix.clone(),
            channel: config.channel.clone(),
            local_copy: config.local_copy,
            timeout: config.timeout,
            lifetimes,
            copies,
            health: Mutex::new(Health::default()),
            metrics,
            random: SystemRandom::new(),
        })
    }

    fn key(&self, hashed: &HashedId) -> String {
        format!("{}{}", self.key_prefix, hashed.to_hex())
    }

    fn login_key(&self, hashed: &HashedId) -> String {
        format!("{}login:{}", self.key_prefix, hashed.to_hex())
    }

    /// The set of the sessions (their hashed ids) the provider names by `kind` (`sid`, `sub`).
    fn index_key(&self, kind: &str, name: &HashedName) -> String {
        format!("{}{kind}:{}", self.key_prefix, name.to_hex())
    }

    /// The index sets a session of `claims` belongs to: its provider session id, its subject.
    fn index_keys(&self, claims: &SessionClaims) -> Vec<String> {
        [("sid", claims.claim_text("sid")), ("sub", Some(claims.subject()))]
            .into_iter()
            .filter_map(|(kind, value)| Some(self.index_key(kind, &HashedName::of(claims.issuer(), kind, value?))))
            .collect()
    }

    /// Keeps a login under way for `ttl` under a new `state`, which it returns.
    pub async fn open_login(
        &self,
        transaction: &StoredLoginTransaction,
        ttl: Duration,
    ) -> Result<SessionId, StoreError> {
        for _ in 0..ID_ATTEMPTS {
            let state = SessionId::generate(&self.random).ok_or(StoreError::Random)?;
            let hashed = HashedId::of(&state);
            let sealed = self.seal(transaction, &hashed)?;
            let mut connection = self.connection.clone();
            let command = redis::cmd("SET")
                .arg(self.login_key(&hashed))
                .arg(sealed)
                .arg("NX")
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .clone();
            let created: Option<String> = self.bounded("open login", command.query_async(&mut connection)).await?;
            if created.is_some() {
                return Ok(state);
            }
        }
        Err(StoreError::Random)
    }

    /// The login under way `state` names, when there is one.
    pub async fn login(&self, state: &SessionId) -> Result<Option<StoredLoginTransaction>, StoreError> {
        let hashed = HashedId::of(state);
        let mut connection = self.connection.clone();
        let sealed: Option<Vec<u8>> = self.bounded("read login", connection.get(self.login_key(&hashed))).await?;
        Ok(sealed.and_then(|sealed| self.unseal(&sealed, &hashed)))
    }

    /// Ends the login `state` names: true for the one caller that ended it.
    pub async fn take_login(&self, state: &SessionId) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let key = self.login_key(&HashedId::of(state));
        let deleted: u64 = self.bounded("end login", connection.del(key)).await?;
        Ok(deleted == 1)
    }

    /// Opens a session for `claims` under a new id, in the index of the provider's names for
    /// as long as a session may live; `Unavailable` when Redis cannot store it.
    pub async fn open(
        &self,
        provider: &str,
        claims: SessionClaims,
        id_token: Option<IdTokenHint>,
        tokens: Option<ProviderTokens>,
    ) -> Result<SessionId, StoreError> {
        let now = unix_now();
        let login = claims.to_stored();
        let index_keys = self.index_keys(&claims);
        let session = Arc::new(Session::new(Some(provider), claims, id_token, tokens));
        let ttl = self.lifetimes.remaining(now, now, now).max(1);
        for _ in 0..ID_ATTEMPTS {
            let id = SessionId::generate(&self.random).ok_or(StoreError::Random)?;
            let hashed = HashedId::of(&id);
            let stored = StoredSessionRef {
                login: &login,
                opened: now,
                last_used: now,
                id_token: session.id_token().map(IdTokenHint::expose),
                provider: Some(provider),
                tokens: session.tokens(),
            };
            let sealed = self.seal(&stored, &hashed)?;
            let mut connection = self.connection.clone();
            let mut pipeline = redis::pipe();
            pipeline.atomic().cmd("SET").arg(self.key(&hashed)).arg(sealed).arg("NX").arg("EX").arg(ttl);
            for index in &index_keys {
                pipeline.sadd(index, hashed.to_hex()).ignore().expire(index, self.index_ttl_secs()).ignore();
            }
            let (created,): (Option<String>,) = self.bounded("open", pipeline.query_async(&mut connection)).await?;
            if created.is_some() {
                let copy = LocalCopy { session, read_at: Instant::now(), opened: now, last_used: now };
                self.copies.put(hashed, Arc::new(copy), Instant::now());
                self.metrics.record_session_opened();
                self.metrics.record_sessions_held(self.copies.len());
                return Ok(id);
            }
        }
        Err(StoreError::Random)
    }

    /// The session `id` names, when it is open: from the local copy read less than
    /// `local_copy` ago, else from Redis; while Redis cannot be reached, from a local copy read
    /// less than the outage grace ago.
    pub async fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        let hashed = HashedId::of(id);
        let now = unix_now();
        let copy = self.copies.get(&hashed, Instant::now());
        if let Some(copy) = &copy
            && copy.read_at.elapsed() < self.local_copy
        {
            return self.live(copy, now);
        }
        match self.read(&hashed).await {
            Ok(Some(stored)) => self.keep(hashed, stored, copy.as_deref(), now).await,
            Ok(None) => {
                self.copies.end(&hashed);
                None
            }
            Err(StoreError::Unavailable) => copy.and_then(|copy| self.live(&copy, now)),
            Err(_) => None,
        }
    }

    /// How long an index set lives after a session joins it: as long as that session may.
    fn index_ttl_secs(&self) -> i64 {
        i64::try_from(self.lifetimes.max_secs.max(1)).unwrap_or(i64::MAX)
    }

    /// Ends every session the provider's `names` pick (by `sid` when given, else by `sub`) and
    /// tells every replica; how many ended.
    pub async fn end_named(&self, names: ProviderNames<'_>) -> Result<usize, StoreError> {
        let index = match (names.sid, names.sub) {
            (Some(sid), _) => self.index_key("sid", &HashedName::of(names.issuer, "sid", sid)),
            (None, Some(sub)) => self.index_key("sub", &HashedName::of(names.issuer, "sub", sub)),
            (None, None) => return Ok(0),
        };
        let mut connection = self.connection.clone();
        let members: Vec<String> = self.bounded("read index", connection.smembers(&index)).await?;
        let hashed: Vec<HashedId> = members.iter().filter_map(|member| HashedId::from_hex(member)).collect();
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for session in &hashed {
            self.copies.end(session);
            pipeline.del(self.key(session)).publish(&*self.channel, session.to_hex()).ignore();
        }
        pipeline.del(&index).ignore();
        let deleted: Vec<u64> = self.bounded("end named", pipeline.query_async(&mut connection)).await?;
        let ended = deleted.into_iter().filter(|deleted| *deleted > 0).count();
        self.metrics.record_session_ended(SessionEnd::BackChannel.as_str(), ended);
        self.metrics.record_sessions_held(self.copies.len());
        Ok(ended)
    }

    /// True the first time the logout token `id` is offered within `window` (on any replica);
    /// false for a replay.
    pub async fn first_use_of_logout_token(&self, id: &HashedName, window: Duration) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let key = format!("{}logout-jti:{}", self.key_prefix, id.to_hex());
        let command = redis::cmd("SET").arg(key).arg(1).arg("NX").arg("EX").arg(window.as_secs().max(1)).clone();
        let created: Option<String> =
            self.bounded("remember logout token", command.query_async(&mut connection)).await?;
        Ok(created.is_some())
    }

    fn live(&self, copy: &LocalCopy, now: u64) -> Option<Arc<Session>> {
        (self.lifetimes.remaining(copy.opened, copy.last_used, now) > 0).then(|| copy.session.clone())
    }

    /// Ends the session `id` names in Redis and tells every replica; `Unavailable` when Redis
    /// cannot be reached (the session may then still be open).
    pub async fn end(&self, id: &SessionId, reason: SessionEnd) -> Result<bool, StoreError> {
        let hashed = HashedId::of(id);
        self.copies.end(&hashed);
        self.metrics.record_sessions_held(self.copies.len());
        let mut connection = self.connection.clone();
        let mut pipeline = redis::pipe();
        pipeline.atomic().del(self.key(&hashed)).publish(&*self.channel, hashed.to_hex());
        let (deleted, _listeners): (u64, u64) = self.bounded("end", pipeline.query_async(&mut connection)).await?;
        self.metrics.record_session_ended(reason.as_str(), usize::from(deleted > 0));
        Ok(deleted > 0)
    }

    /// The session `id` names as Redis holds it now, whatever the local copy says (kept as the
    /// new local copy); `None` when it ended. Its last use is not written.
    pub async fn read_fresh(&self, id: &SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        let hashed = HashedId::of(id);
        let previous = self.copies.get(&hashed, Instant::now());
        match self.read(&hashed).await? {
            Some(stored) => Ok(self.keep_as_read(hashed, stored, previous.as_deref(), unix_now())),
            None => {
                self.copies.end(&hashed);
                Ok(None)
            }
        }
    }

    /// Writes `session` (new tokens, perhaps new claims) in place of the session `id` names,
    /// only while it exists, keeping its lifetimes; tells every replica to read it again.
    /// `None` when the session ended meanwhile.
    pub async fn write_refreshed(&self, id: &SessionId, session: Session) -> Result<Option<Arc<Session>>, StoreError> {
        let hashed = HashedId::of(id);
        let Some(stored) = self.read(&hashed).await? else { return Ok(None) };
        let login = session.claims().to_stored();
        let (opened, last_used) = (stored.opened, stored.last_used);
        let written = StoredSessionRef {
            login: &login,
            opened,
            last_used,
            id_token: session.id_token().map(IdTokenHint::expose),
            provider: session.provider(),
            tokens: session.tokens(),
        };
        let sealed = self.seal(&written, &hashed)?;
        let mut connection = self.connection.clone();
        let mut pipeline = redis::pipe();
        pipeline.atomic().cmd("SET").arg(self.key(&hashed)).arg(sealed).arg("XX").arg("KEEPTTL");
        pipeline.publish(&*self.channel, hashed.to_hex()).ignore();
        let (written,): (Option<String>,) =
            self.bounded("write refreshed", pipeline.query_async(&mut connection)).await?;
        if written.is_none() {
            self.copies.end(&hashed);
            return Ok(None);
        }
        let session = Arc::new(session);
        let copy = LocalCopy { session: session.clone(), read_at: Instant::now(), opened, last_used };
        self.copies.put(hashed, Arc::new(copy), Instant::now());
        Ok(Some(session))
    }

    /// Takes the lock that lets one replica at a time refresh the session `id` names, for at
    /// most `hold` (`SET NX PX`); `None` when another holds it.
    pub async fn lock_refresh(&self, id: &SessionId, hold: Duration) -> Result<Option<RefreshLock>, StoreError> {
        let owner = SessionId::generate(&self.random).ok_or(StoreError::Random)?.to_cookie_value();
        let key = self.refresh_lock_key(&HashedId::of(id));
        let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let command = redis::cmd("SET").arg(&key).arg(&owner).arg("NX").arg("PX").arg(millis).clone();
        let mut connection = self.connection.clone();
        let taken: Option<String> = self.bounded("lock refresh", command.query_async(&mut connection)).await?;
        Ok(taken.map(|_| RefreshLock { key, owner }))
    }

    /// Gives the lock back, when this replica still holds it (it may have run out).
    pub async fn unlock_refresh(&self, lock: RefreshLock) {
        let command = redis::cmd("EVAL").arg(RELEASE_LOCK_SCRIPT).arg(1).arg(&lock.key).arg(&lock.owner).clone();
        let mut connection = self.connection.clone();
        let _: Result<u64, _> = self.bounded("unlock refresh", command.query_async(&mut connection)).await;
    }

    /// Whether some replica holds the refresh lock of the session `id` names.
    pub async fn is_refresh_locked(&self, id: &SessionId) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let key = self.refresh_lock_key(&HashedId::of(id));
        self.bounded("read refresh lock", connection.exists(key)).await
    }

    fn refresh_lock_key(&self, hashed: &HashedId) -> String {
        format!("{}refresh-lock:{}", self.key_prefix, hashed.to_hex())
    }

    /// What is wrong with the store now, when something is.
    pub fn problem(&self) -> Option<String> {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match (&health.command, &health.listener) {
            (None, None) => None,
            (Some(command), None) => Some(command.clone()),
            (None, Some(listener)) => Some(listener.clone()),
            (Some(command), Some(listener)) => Some(format!("{command}; {listener}")),
        }
    }

    /// Listens for the sessions other replicas end and drops their local copies; subscribes
    /// again after every loss, dropping every local copy then (an announcement may have been
    /// missed). Runs until cancelled.
    pub async fn listen_for_ended_sessions(self: Arc<Self>) {
        self.link.listen(&self.channel, &*self).await;
    }

    /// The stored session `hashed` names: `None` when there is none, or it does not open
    /// (changed, sealed for another id, or with a key no longer configured: logged, counted).
    async fn read(&self, hashed: &HashedId) -> Result<Option<StoredSession>, StoreError> {
        let mut connection = self.connection.clone();
        let sealed: Option<Vec<u8>> = self.bounded("read", connection.get(self.key(hashed))).await?;
        Ok(sealed.and_then(|sealed| {
            let stored: StoredSession = self.unseal(&sealed, hashed)?;
            Some(StoredSession { sealed, ..stored })
        }))
    }

    /// What `sealed` holds, when it opens for `hashed`; else logged (without its content),
    /// counted, and `None`.
    fn unseal<T: DeserializeOwned>(&self, sealed: &[u8], hashed: &HashedId) -> Option<T> {
        let opened = self.keys.open(sealed, hashed.as_bytes()).map_err(|error| error.to_string());
        match opened.and_then(|plain| serde_json::from_slice(&plain).map_err(|error| error.to_string())) {
            Ok(value) => Some(value),
            Err(error) => {
                self.metrics.record_session_store_error();
                tracing::warn!(%error, "Refused a stored session or login that does not open");
                None
            }
        }
    }

    /// A session read from Redis kept as the local copy, when it is still within its
    /// lifetimes; its last use is written back when it is older than the refresh bound.
    async fn keep(
        &self,
        hashed: HashedId,
        mut stored: StoredSession,
        previous: Option<&LocalCopy>,
        now: u64,
    ) -> Option<Arc<Session>> {
        if self.lifetimes.remaining(stored.opened, stored.last_used, now) == 0 {
            return self.keep_as_read(hashed, stored, previous, now);
        }
        if now.saturating_sub(stored.last_used) >= self.lifetimes.refresh_after_secs() {
            match self.touch(&hashed, &stored, now).await {
                Ok(true) => stored.last_used = now,
                Ok(false) => {
                    self.copies.end(&hashed);
                    return None;
                }
                Err(_) => {}
            }
        }
        self.keep_as_read(hashed, stored, previous, now)
    }

    /// A session read from Redis kept as the local copy, as it was read, when it is still within
    /// its lifetimes (an expired one is counted as ended).
    fn keep_as_read(
        &self,
        hashed: HashedId,
        stored: StoredSession,
        previous: Option<&LocalCopy>,
        now: u64,
    ) -> Option<Arc<Session>> {
        let StoredSession { login, opened, last_used, id_token, provider, tokens, .. } = stored;
        if self.lifetimes.remaining(opened, last_used, now) == 0 {
            self.copies.end(&hashed);
            self.metrics.record_session_ended(self.lifetimes.ended_by(opened, now).as_str(), 1);
            self.metrics.record_sessions_held(self.copies.len());
            return None;
        }
        // Unless its tokens were refreshed, the copy before keeps its built identity.
        let unchanged = previous.filter(|copy| copy.opened == opened && copy.session.tokens() == tokens.as_ref());
        let session = match unchanged {
            Some(copy) => copy.session.clone(),
            None => Arc::new(Session::new(
                provider.as_deref(),
                SessionClaims::from_stored(login).ok()?,
                id_token.as_deref().map(IdTokenHint::new),
                tokens,
            )),
        };
        let copy = LocalCopy { session: session.clone(), read_at: Instant::now(), opened, last_used };
        self.copies.put(hashed, Arc::new(copy), Instant::now());
        self.metrics.record_sessions_held(self.copies.len());
        Some(session)
    }

    /// Writes the session's last use as `now`, only while it holds what was read (an ended
    /// session is never brought back, tokens another replica refreshed meanwhile are never
    /// overwritten with the old ones); false when it no longer exists.
    async fn touch(&self, hashed: &HashedId, stored: &StoredSession, now: u64) -> Result<bool, StoreError> {
        let StoredSession { login, opened, id_token, provider, tokens, sealed: read, .. } = stored;
        let opened = *opened;
        let written = StoredSessionRef {
            login,
            opened,
            last_used: now,
            id_token: id_token.as_deref(),
            provider: provider.as_deref(),
            tokens: tokens.as_ref(),
        };
        let sealed = self.seal(&written, hashed)?;
        let ttl = self.lifetimes.remaining(opened, now, now).max(1);
        let mut connection = self.connection.clone();
        let command =
            redis::cmd("EVAL").arg(TOUCH_SCRIPT).arg(1).arg(self.key(hashed)).arg(read).arg(sealed).arg(ttl).clone();
        let outcome: u8 = self.bounded("write last use", command.query_async(&mut connection)).await?;
        Ok(outcome != 0)
    }

    /// `value` as JSON, sealed for `hashed`.
    fn seal(&self, value: &impl Serialize, hashed: &HashedId) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(value).map_err(|_| StoreError::Unavailable)?;
        self.keys.seal(&plain, hashed.as_bytes()).map_err(|_| StoreError::Random)
    }

    /// `command` within the timeout; a failure is counted, noted for `/readyz` and logged
    /// when the store was healthy before.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        command: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let cause = match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => {
                self.set_health(Part::Command, None);
                return Ok(value);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.metrics.record_session_store_error();
        self.set_health(Part::Command, Some(format!("{operation}: {cause}")));
        Err(StoreError::Unavailable)
    }

    /// Sets one part of the health; logs when it turns bad or good again.
    fn set_health(&self, part: Part, problem: Option<String>) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match part {
            Part::Command => &mut health.command,
            Part::Listener => &mut health.listener,
        };
        match (slot.is_some(), &problem) {
            (false, Some(problem)) => tracing::warn!(%problem, "The session store (Redis) is unavailable"),
            (true, None) => tracing::info!("The session store (Redis) is available again"),
            _ => {}
        }
        *slot = problem;
    }
}

impl Subscriber for RedisSessions {
    async fn subscribed(&self) -> Result<(), String> {
        self.copies.clear();
        self.set_health(Part::Listener, None);
        tracing::info!("Listening for sessions ended on other replicas");
        Ok(())
    }

    fn message(&self, payload: &str) {
        if let Some(hashed) = HashedId::from_hex(payload) {
            self.copies.end(&hashed);
        }
    }

    fn lost(&self, cause: String) {
        self.metrics.record_session_store_error();
        self.set_health(Part::Listener, Some(format!("listening for ended sessions: {cause}")));
    }
}

/// [`StoredSession`] for sealing, borrowing the login.
#[derive(Serialize)]
struct StoredSessionRef<'s> {
    login: &'s StoredLogin,
    opened: u64,
    last_used: u64,
    id_token: Option<&'s str>,
    provider: Option<&'s str>,
    tokens: Option<&'s ProviderTokens>,
}

/// The refresh lock of one session, held by this replica: its key and the random value that
/// says it is this replica's.
#[derive(Debug)]
pub struct RefreshLock {
    key: String,
    owner: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_the_earlier_of_its_idle_and_absolute_ends() {
        let lifetimes = Lifetimes { idle_secs: 100, max_secs: 1000 };
        assert_eq!(lifetimes.remaining(0, 0, 0), 100);
        assert_eq!(lifetimes.remaining(0, 950, 960), 40, "the absolute end comes first");
        assert_eq!(lifetimes.remaining(0, 10, 110), 0, "idle for 100 s");
        assert_eq!(lifetimes.remaining(0, 990, 1000), 0, "1000 s after the login");
        assert_eq!(lifetimes.refresh_after_secs(), 25);
        assert_eq!(Lifetimes { idle_secs: 8 * 3600, max_secs: 86400 }.refresh_after_secs(), 60);
    }
}
