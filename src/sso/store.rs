//! The in-memory session store: opaque 256-bit random session ids, idle and absolute lifetimes, a bound on how many are kept (the least recently used of a shard ends first); never holds a session id in a log line, and time is an input.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::stripes::CachePadded;

/// How many random bytes a session id has: 256 bits.
const ID_BYTES: usize = 32;

/// Sessions a shard holds at least: a store of fewer than twice this many is one shard, whose
/// least recently used session is the store's.
const MIN_SESSIONS_PER_SHARD: usize = 1024;

/// Shards of the largest stores: enough that cores checking session cookies at once rarely
/// take the same lock.
const MAX_SHARDS: usize = 16;

/// A key made of random bytes (a session id, or its SHA-256), whose first bytes spread keys
/// evenly over the shards.
pub trait RandomKey: Copy + Eq + Hash {
    /// The key's first 8 bytes.
    fn first_bits(&self) -> u64;
}

/// The first 8 bytes of `bytes`.
fn first_bits(bytes: &[u8]) -> u64 {
    let mut first = [0; 8];
    for (slot, byte) in first.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    u64::from_le_bytes(first)
}

/// A session id: 32 random bytes, sent in the session cookie as 43 base64url characters.
/// `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_BYTES]);

impl SessionId {
    /// A fresh id from the system's secure random generator; `None` when it fails.
    pub(super) fn generate(random: &SystemRandom) -> Option<Self> {
        let mut bytes = [0; ID_BYTES];
        random.fill(&mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// The id as the cookie carries it.
    pub fn to_cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The id a cookie value names; `None` for anything but 43 base64url characters.
    pub fn from_cookie_value(value: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl RandomKey for SessionId {
    fn first_bits(&self) -> u64 {
        first_bits(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

/// The SHA-256 of a session id: what a shared store knows a session by, so that reading the
/// store yields no id a cookie could carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashedId([u8; 32]);

impl HashedId {
    /// The hash of `id`.
    pub fn of(id: &SessionId) -> Self {
        let mut bytes = [0; 32];
        for (slot, byte) in bytes.iter_mut().zip(digest(&SHA256, &id.0).as_ref()) {
            *slot = *byte;
        }
        Self(bytes)
    }

    /// The hash's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The hash 64 hex digits spell; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl RandomKey for HashedId {
    fn first_bits(&self) -> u64 {
        first_bits(&self.0)
    }
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The system's random generator failed.
    #[error("the system's random generator failed")]
    Random,
    /// The shared session store cannot be reached, or refused.
    #[error("the session store is unavailable")]
    Unavailable,
}

/// Which lifetime ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Not used for the idle timeout.
    Idle,
    /// Opened longer ago than the absolute lifetime.
    MaxLifetime,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    /// The open session.
    Found(Arc<T>),
    /// No session under that id.
    Missing,
    /// A session that had just expired, and is ended now.
    Expired(Expiry),
}

/// How long sessions live and how many are kept.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// A session not used this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after it was opened.
    pub max_lifetime: Duration,
    /// Sessions kept; opening one more ends the least recently used of its shard.
    pub max_sessions: usize,
}

struct Entry<T> {
    value: Arc<T>,
    opened: Instant,
    last_used: Instant,
    /// This entry's place in the use order.
    tick: u64,
}

/// One shard's sessions.
struct Sessions<T, K> {
    by_id: HashMap<K, Entry<T>>,
    /// Every session of the shard by its last use, oldest first.
    by_use: BTreeMap<u64, K>,
    next_tick: u64,
    /// The shard's share of `max_sessions`.
    max_sessions: usize,
}

/// One shard, its lock alone on its cache lines.
type Shard<T, K> = CachePadded<Mutex<Sessions<T, K>>>;

/// The sessions of one replica, in memory, by their id (or by what a shared store knows them
/// by, for its local copies), in shards by id so that checks on many cores rarely take the same
/// lock. Each shard holds its share of `max_sessions`; a full shard ends its least recently used
/// session to open a new one: a login always succeeds, and the person whose session ended logs
/// in again. A store of fewer than 2048 sessions is one shard, with an exact least recently used
/// order; a larger one has up to 16 shards of at least 1024 sessions each.
pub struct SessionStore<T, K = SessionId> {
    shards: Box<[Shard<T, K>]>,
    limits: StoreLimits,
    random: SystemRandom,
}

impl<T, K: RandomKey> fmt::Debug for SessionStore<T, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore").field("sessions", &self.len()).field("limits", &self.limits).finish()
    }
}

impl<T, K: RandomKey> SessionStore<T, K> {
    /// An empty store, in `clamp(max_sessions / 1024, 1, 16)` shards that share `max_sessions`
    /// out as evenly as they can.
    pub fn new(limits: StoreLimits) -> Self {
        let max_sessions = limits.max_sessions.max(1);
        let shards = (max_sessions / MIN_SESSIONS_PER_SHARD).clamp(1, MAX_SHARDS);
        let (share, rest) = (max_sessions / shards, max_sessions % shards);
        let shards = (0..shards)
            .map(|shard| {
                let max_sessions = share + usize::from(shard < rest);
                let sessions = Sessions { by_id: HashMap::new(), by_use: BTreeMap::new(), next_tick: 0, max_sessions };
                CachePadded(Mutex::new(sessions))
            })
            .collect();
        Self { shards, limits: StoreLimits { max_sessions, ..limits }, random: SystemRandom::new() }
    }

    /// The shard `id` belongs to, locked.
    #[expect(
        clippy::indexing_slicing,
        clippy::cast_possible_truncation,
        reason = "`new` makes 1 to 16 shards, and the index is taken modulo their number"
    )]
    fn lock(&self, id: &K) -> MutexGuard<'_, Sessions<T, K>> {
        Self::lock_shard(&self.shards[(id.first_bits() % self.shards.len() as u64) as usize])
    }

    fn lock_shard(shard: &Mutex<Sessions<T, K>>) -> MutexGuard<'_, Sessions<T, K>> {
        // A panic while holding the lock leaves consistent maps: every change is one insert or remove pair.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard, locked one after another.
    fn each_shard(&self) -> impl Iterator<Item = MutexGuard<'_, Sessions<T, K>>> {
        self.shards.iter().map(|shard| Self::lock_shard(shard))
    }

    /// Keeps `value` under `id` from `now` on, in place of what `id` held, ending the least
    /// recently used session of its shard first when the shard is full.
    pub fn put(&self, id: K, value: Arc<T>, now: Instant) {
        let mut sessions = self.lock(&id);
        sessions.end(&id);
        sessions.insert(id, value, now);
    }

    /// The session `id` names, when it is open and within its lifetimes at `now`; its use is
    /// recorded. An expired session is ended.
    pub fn get(&self, id: &K, now: Instant) -> Option<Arc<T>> {
        match self.lookup(id, now) {
            Lookup::Found(value) => Some(value),
            Lookup::Missing | Lookup::Expired(_) => None,
        }
    }

    /// [`Self::get`], saying which lifetime ended an expired session.
    pub fn lookup(&self, id: &K, now: Instant) -> Lookup<T> {
        let mut sessions = self.lock(id);
        let Some(entry) = sessions.by_id.get(id) else { return Lookup::Missing };
        let idle = now.saturating_duration_since(entry.last_used);
        let age = now.saturating_duration_since(entry.opened);
        let expired = if age >= self.limits.max_lifetime {
            Some(Expiry::MaxLifetime)
        } else if idle >= self.limits.idle_timeout {
            Some(Expiry::Idle)
        } else {
            None
        };
        if let Some(expiry) = expired {
            sessions.end(id);
            return Lookup::Expired(expiry);
        }
        let old_tick = entry.tick;
        let tick = sessions.take_tick();
        sessions.by_use.remove(&old_tick);
        sessions.by_use.insert(tick, *id);
        let Some(entry) = sessions.by_id.get_mut(id) else { return Lookup::Missing };
        entry.tick = tick;
        entry.last_used = now;
        Lookup::Found(entry.value.clone())
    }

    /// Puts `value` in place of what `id` holds, keeping its lifetimes and place in the use
    /// order; false (and nothing kept) when `id` holds nothing.
    pub fn replace(&self, id: &K, value: Arc<T>) -> bool {
        match self.lock(id).by_id.get_mut(id) {
            Some(entry) => {
                entry.value = value;
                true
            }
            None => false,
        }
    }

    /// Ends the session `id` names and hands back what it held, when it was still open: of two
    /// callers taking the same session at once, one gets it.
    pub fn take(&self, id: &K, now: Instant) -> Option<Arc<T>> {
        let value = self.get(id, now)?;
        self.lock(id).end(id).then_some(value)
    }

    /// Ends the session `id` names; false when there was none.
    pub fn end(&self, id: &K) -> bool {
        self.lock(id).end(id)
    }

    /// Ends every session whose value `ends` picks; how many ended. Looks at every session: for
    /// rare events (a back-channel logout), not for checks.
    pub fn end_where(&self, ends: impl Fn(&T) -> bool) -> usize {
        self.each_shard()
            .map(|mut sessions| {
                let picked: Vec<K> =
                    sessions.by_id.iter().filter(|(_, entry)| ends(&entry.value)).map(|(id, _)| *id).collect();
                picked.iter().filter(|id| sessions.end(id)).count()
            })
            .sum()
    }

    /// Ends every session.
    pub fn clear(&self) {
        for mut sessions in self.each_shard() {
            sessions.by_id.clear();
            sessions.by_use.clear();
        }
    }

    /// How many sessions are open (expired ones included until they are next looked up): the
    /// shards' counts, each read under its lock in turn.
    pub fn len(&self) -> usize {
        self.each_shard().map(|sessions| sessions.by_id.len()).sum()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> SessionStore<T, SessionId> {
    /// Opens a session holding `value` under a new id (never one in use), ending the least
    /// recently used session of its shard first when the shard is full.
    pub fn open(&self, value: T, now: Instant) -> Result<SessionId, StoreError> {
        self.open_evicting(value, now).map(|(id, _)| id)
    }

    /// [`Self::open`], also saying how many sessions it ended to make room.
    pub fn open_evicting(&self, value: T, now: Instant) -> Result<(SessionId, usize), StoreError> {
        loop {
            let id = SessionId::generate(&self.random).ok_or(StoreError::Random)?;
            let mut sessions = self.lock(&id);
            if !sessions.by_id.contains_key(&id) {
                return Ok((id, sessions.insert(id, Arc::new(value), now)));
            }
        }
    }
}

impl<T, K: RandomKey> Sessions<T, K> {
    fn take_tick(&mut self) -> u64 {
        self.next_tick = self.next_tick.wrapping_add(1);
        self.next_tick
    }

    /// Keeps `value` under `id`, which holds nothing, after ending the shard's least recently
    /// used sessions beyond its `max_sessions - 1`; how many it ended.
    fn insert(&mut self, id: K, value: Arc<T>, now: Instant) -> usize {
        let mut evicted = 0;
        while self.by_id.len() >= self.max_sessions {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            self.by_id.remove(&oldest);
            evicted += 1;
        }
        let tick = self.take_tick();
        self.by_use.insert(tick, id);
        self.by_id.insert(id, Entry { value, opened: now, last_used: now, tick });
        evicted
    }

    fn end(&mut self, id: &K) -> bool {
        match self.by_id.remove(id) {
            Some(entry) => {
                self.by_use.remove(&entry.tick);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_sessions: usize) -> SessionStore<&'static str> {
        SessionStore::new(StoreLimits {
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(600),
            max_sessions,
        })
    }

    #[test]
    fn a_session_is_found_by_its_id_and_by_no_other() {
        let store = store(10);
        let now = Instant::now();
        let alice = store.open("alice", now).unwrap();
        let bob = store.open("bob", now).unwrap();
        assert_ne!(alice, bob);
        assert_eq!(store.get(&alice, now).as_deref(), Some(&"alice"));
        assert_eq!(store.get(&bob, now).as_deref(), Some(&"bob"));
        let forged = SessionId::from_cookie_value(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap();
        assert_eq!(store.get(&forged, now), None);
    }

    #[test]
    fn a_full_store_ends_the_least_recently_used_session_and_never_hands_out_another() {
        let store = store(2);
        let start = Instant::now();
        let first = store.open("first", start).unwrap();
        let second = store.open("second", start + Duration::from_secs(1)).unwrap();
        // `first` is used again, so `second` is now the least recently used.
        assert!(store.get(&first, start + Duration::from_secs(2)).is_some());
        let third = store.open("third", start + Duration::from_secs(3)).unwrap();
        let at = start + Duration::from_secs(4);
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&second, at), None, "the least recently used session ended");
        assert_eq!(store.get(&first, at).as_deref(), Some(&"first"));
        assert_eq!(store.get(&third, at).as_deref(), Some(&"third"));
    }

    #[test]
    fn a_session_ends_after_its_idle_time_and_after_its_lifetime_however_used() {
        let store = store(10);
        let start = Instant::now();
        let idle = store.open("idle", start).unwrap();
        assert_eq!(store.get(&idle, start + Duration::from_secs(60)), None, "idle for 60 s");
        let busy = store.open("busy", start).unwrap();
        for minute in 1..10 {
            assert!(store.get(&busy, start + Duration::from_secs(minute * 59)).is_some(), "minute {minute}");
        }
        assert_eq!(store.get(&busy, start + Duration::from_secs(600)), None, "600 s after login");
        assert!(store.is_empty(), "expired sessions are ended when found");
    }

    #[test]
    fn an_expired_session_says_which_lifetime_ended_it_and_a_full_store_says_how_many_it_ended() {
        let store = store(1);
        let start = Instant::now();
        let (idle, evicted) = store.open_evicting("idle", start).unwrap();
        assert_eq!(evicted, 0);
        assert_eq!(store.lookup(&idle, start + Duration::from_secs(60)), Lookup::Expired(Expiry::Idle));
        assert_eq!(store.lookup(&idle, start), Lookup::Missing, "ended when found expired");
        let (old, _) = store.open_evicting("old", start).unwrap();
        assert_eq!(store.lookup(&old, start + Duration::from_secs(600)), Lookup::Expired(Expiry::MaxLifetime));
        let (first, _) = store.open_evicting("first", start).unwrap();
        let (_, evicted) = store.open_evicting("second", start).unwrap();
        assert_eq!((evicted, store.get(&first, start)), (1, None));
    }

    #[test]
    fn a_replaced_session_keeps_its_lifetimes_and_an_ended_one_is_not_brought_back() {
        let store = store(10);
        let start = Instant::now();
        let id = store.open("before", start).unwrap();
        assert!(store.replace(&id, Arc::new("after")));
        assert_eq!(store.get(&id, start + Duration::from_secs(59)).as_deref(), Some(&"after"));
        assert_eq!(store.get(&id, start + Duration::from_secs(600)), None, "the login's lifetime still counts");
        assert!(!store.replace(&id, Arc::new("again")), "ended: nothing kept");
        assert!(store.is_empty());
    }

    /// The shard `id` belongs to in `store`.
    fn shard_of<T>(store: &SessionStore<T>, id: &SessionId) -> usize {
        usize::try_from(id.first_bits() % u64::try_from(store.shards.len()).unwrap()).unwrap()
    }

    #[test]
    fn shards_share_max_sessions_exactly_and_small_stores_are_one_shard() {
        for (max_sessions, shards) in [(1, 1), (10, 1), (2047, 1), (2048, 2), (4097, 4), (100_000, 16), (1 << 20, 16)] {
            let store = store(max_sessions);
            let shares: Vec<usize> = store.each_shard().map(|sessions| sessions.max_sessions).collect();
            assert_eq!((shares.len(), shares.iter().sum::<usize>()), (shards, max_sessions), "{max_sessions}");
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1, "{max_sessions}: {shares:?}");
        }
    }

    #[test]
    fn a_sharded_store_finds_every_session_and_never_holds_more_than_max_sessions() {
        let store = store(4096);
        let now = Instant::now();
        let ids: Vec<SessionId> = (0..3000).map(|_| store.open("open", now).unwrap()).collect();
        let held: Vec<usize> = store.each_shard().map(|sessions| sessions.by_id.len()).collect();
        assert!(held.iter().filter(|&&held| held > 0).count() > 1, "one shard holds them all: {held:?}");
        assert_eq!(store.len(), 3000);
        assert!(ids.iter().all(|id| store.get(id, now).is_some()), "every session is found");
        for opened in 3000..6000 {
            store.open("more", now).unwrap();
            assert!(store.len() <= 4096, "{} held after {opened}", store.len());
        }
        assert_eq!(store.len(), 4096, "every shard full");
    }

    #[test]
    fn a_full_shard_ends_its_own_least_recently_used_session() {
        let store = store(4096);
        let now = Instant::now();
        // Per shard, its sessions in the order they were opened.
        let mut opened: Vec<Vec<SessionId>> = vec![Vec::new(); store.shards.len()];
        let open = |opened: &mut Vec<Vec<SessionId>>| {
            let (id, evicted) = store.open_evicting("open", now).unwrap();
            opened[shard_of(&store, &id)].push(id);
            (id, evicted)
        };
        for _ in 0..100 {
            open(&mut opened);
        }
        // Each shard's first session is used again: its second is now its least recently used.
        assert!(opened.iter().all(|ids| store.get(&ids[0], now).is_some()));
        let full = loop {
            let (id, evicted) = open(&mut opened);
            if evicted > 0 {
                assert_eq!(evicted, 1);
                break shard_of(&store, &id);
            }
        };
        assert_eq!(store.get(&opened[full][1], now), None, "the full shard's least recently used ended");
        assert!(store.get(&opened[full][0], now).is_some(), "used again, so kept");
        assert!(store.len() < 4096, "the other shards still had room");
        for (shard, ids) in opened.iter().enumerate().filter(|(shard, _)| *shard != full) {
            assert!(ids.iter().all(|id| store.get(id, now).is_some()), "shard {shard} lost a session");
        }
    }

    #[test]
    fn an_ended_session_is_gone() {
        let store = store(10);
        let now = Instant::now();
        let id = store.open("gone", now).unwrap();
        assert!(store.end(&id));
        assert!(!store.end(&id));
        assert_eq!(store.get(&id, now), None);
    }

    #[test]
    fn the_sessions_picked_end_and_the_others_stay() {
        let store = store(10);
        let now = Instant::now();
        let alice_1 = store.open("alice", now).unwrap();
        let alice_2 = store.open("alice", now).unwrap();
        let bob = store.open("bob", now).unwrap();
        assert_eq!(store.end_where(|name| *name == "alice"), 2);
        assert_eq!((store.get(&alice_1, now), store.get(&alice_2, now)), (None, None));
        assert_eq!(store.get(&bob, now).as_deref(), Some(&"bob"));
        assert_eq!(store.end_where(|name| *name == "alice"), 0);
    }

    #[test]
    fn a_session_is_taken_once() {
        let store = store(10);
        let now = Instant::now();
        let id = store.open("once", now).unwrap();
        assert_eq!(store.take(&id, now).as_deref(), Some(&"once"));
        assert_eq!(store.take(&id, now), None);
    }

    #[test]
    fn a_shared_store_knows_a_session_by_the_sha256_of_its_id_only() {
        let id = SessionId::from_cookie_value(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap();
        let hashed = HashedId::of(&id);
        // sha256 of 32 bytes of 7, computed independently (Python's hashlib).
        assert_eq!(hashed.to_hex(), "4bb06f8e4e3a7715d201d573d0aa423762e55dabd61a2c02278fa56cc6d294e0");
        assert_eq!(HashedId::from_hex(&hashed.to_hex()), Some(hashed));
        assert!(!hashed.to_hex().contains(&id.to_cookie_value()));
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63)] {
            assert_eq!(HashedId::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_copies_are_kept_under_the_key_given_and_replaced_in_place() {
        let copies: SessionStore<&str, HashedId> = SessionStore::new(StoreLimits {
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(60),
            max_sessions: 10,
        });
        let now = Instant::now();
        let key = HashedId::of(&SessionId([1; 32]));
        copies.put(key, Arc::new("first read"), now);
        copies.put(key, Arc::new("second read"), now);
        assert_eq!((copies.len(), copies.get(&key, now).as_deref()), (1, Some(&"second read")));
        copies.clear();
        assert!(copies.is_empty());
    }

    #[test]
    fn session_ids_survive_their_cookie_form_and_nothing_else_is_read_as_one() {
        let store = store(10);
        let id = store.open("x", Instant::now()).unwrap();
        let value = id.to_cookie_value();
        assert_eq!(value.len(), 43);
        assert_eq!(SessionId::from_cookie_value(&value), Some(id));
        for bad in ["", "abc", value.get(..42).unwrap(), &format!("{value}A"), &"+".repeat(43)] {
            assert_eq!(SessionId::from_cookie_value(bad), None, "{bad}");
        }
        assert_eq!(format!("{id:?}"), "SessionId([redacted])");
    }
}
