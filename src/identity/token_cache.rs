//! The verified-token cache: a token seen again costs a hash and a lookup, not a signature check; a token seen often, a byte comparison on the calling thread's own stripe. Bounded; entries expire with their token; never decides.
//!
//! The hot layer is one per stripe ([`stripes::current`]): a token sent by many cores at once
//! (a service account's) is held by each stripe in its own slot, with its own copy of the
//! identity, so that a hit takes a lock and bumps a reference count that no other core writes.
//! The copy is made once per token per stripe, when the token moves into that stripe's hot
//! layer: an [`Identity`] is two small allocations (its text: the subject and the claim values
//! the policies read, plus every claim as JSON with `decision_log_claims`; and an index of
//! `u32`s) and two reference count increments (its verifier and its `kid`), a few hundred
//! nanoseconds at most beside the SHA-256 the same move has just paid.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use std::cell::OnceCell;

use crate::core::Identity;
use crate::core::authn::{Authentication, AuthnContext, Credential, UnverifiedToken};
use crate::core::jwt::KeySet;
use crate::identity::rejected_tokens::{self, RejectedTokens};
use crate::stripes::{self, CachePadded, STRIPES};
use crate::telemetry::Metrics;

const SHARDS: usize = 16;
/// Slots of each stripe's hot layer, which holds the tokens its threads saw at least twice, by
/// their bytes, so that a token sent again and again (a service account's, a busy session's) is
/// found by comparing bytes instead of computing its SHA-256. A slot costs 32 bytes empty and
/// about 1.5 KiB full for Keycloak's tokens (the token and the stripe's copy of its identity):
/// at most 16 stripes × 256 slots, about 6 MiB when 16 busy threads each keep 256 distinct
/// tokens hot, and only what the stripes in use hold otherwise.
const HOT_SLOTS: usize = 256;
/// Hot slots in one [`HotLine`]: 4 slots of 32 bytes fill its 128.
const SLOTS_PER_LINE: usize = 4;

type Shard = Mutex<ShardEntries>;

/// One shard's tokens, and when its expired ones were last swept out.
#[derive(Debug, Default)]
struct ShardEntries {
    map: HashMap<TokenDigest, Arc<Identity>>,
    swept_at_secs: u64,
}

/// A token of the hot layer, whole, and its stripe's own copy of its identity.
#[derive(Debug)]
struct HotEntry {
    token: Box<str>,
    identity: Arc<Identity>,
}

type HotSlot = Mutex<Option<HotEntry>>;

/// Hot slots on cache lines of their own: a stripe's layer is made of whole lines, so that no
/// line holds two stripes' slots.
type HotLine = CachePadded<[HotSlot; SLOTS_PER_LINE]>;

/// One stripe's hot layer: direct-mapped slots.
type HotLayer = Box<[HotLine]>;

/// Verified tokens by SHA-256 of the token, in shards to keep lock hold times short, with the
/// tokens seen again in a direct-mapped hot layer per stripe in front; and, apart, so that bad
/// tokens never displace good ones, the tokens refused for what they are.
#[derive(Debug)]
pub struct VerifiedTokenCache {
    /// One hot layer per stripe, all with the same number of slots.
    hot: Box<[HotLayer]>,
    /// Slots of each stripe's hot layer.
    hot_slots: usize,
    /// Picks a token's hot slot; seeded at random, so that which tokens share a slot cannot be
    /// planned from outside.
    hot_index: RandomState,
    shards: Box<[Shard]>,
    capacity_per_shard: usize,
    len: AtomicUsize,
    metrics: Arc<Metrics>,
    rejected: RejectedTokens,
    /// Debug builds only: the token text named by [`PANIC_ON_TOKEN_VARIABLE`], whose lookup panics.
    #[cfg(debug_assertions)]
    panic_on_token: Option<String>,
}

/// Fault injection, compiled only in debug builds: a check carrying exactly this variable's
/// value as its token panics inside the token cache lookup, so tests of the real binary can
/// show that a bug inside a check is a deny, `internal_error`, and the server keeps serving.
#[cfg(debug_assertions)]
pub const PANIC_ON_TOKEN_VARIABLE: &str = "PORTCULLIS_DEBUG_PANIC_ON_TOKEN";

/// A token as a cache key: its text, and its digest, computed at most once per check and only
/// when the cache asks for it.
pub struct TokenKey<'a> {
    token: &'a str,
    digest: OnceCell<TokenDigest>,
}

impl<'a> TokenKey<'a> {
    /// The key of `token`; its digest is not computed yet.
    pub fn new(token: &'a str) -> Self {
        Self { token, digest: OnceCell::new() }
    }

    /// The token's text.
    pub fn token(&self) -> &'a str {
        self.token
    }

    /// The token's digest, computed on the first call.
    pub fn digest(&self) -> TokenDigest {
        *self.digest.get_or_init(|| TokenDigest::of(self.token))
    }
}

/// The first 128 bits of a token's SHA-256. A cache hit by digest hands out another token's
/// identity only if a forged token shares a real one's digest: a second preimage, 2^128 work
/// at 128 bits. Half the digest halves the key in every cached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 16]);

impl TokenDigest {
    /// The digest of `token`.
    #[expect(clippy::indexing_slicing, reason = "a SHA-256 digest has 32 bytes")]
    pub fn of(token: &str) -> Self {
        let mut out = [0; 16];
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        out.copy_from_slice(&digest.as_ref()[..16]);
        Self(out)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

impl VerifiedTokenCache {
    /// A cache of at most `capacity` verified tokens (0 disables it) and
    /// [`rejected_tokens::DEFAULT_ENTRIES`] rejected ones.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::default()).collect();
        let hot_lines = HOT_SLOTS.min(capacity).div_ceil(SLOTS_PER_LINE);
        let hot = (0..STRIPES).map(|_| (0..hot_lines).map(|_| CachePadded::default()).collect()).collect();
        Self {
            hot,
            hot_slots: hot_lines * SLOTS_PER_LINE,
            hot_index: RandomState::new(),
            shards,
            capacity_per_shard: capacity.div_ceil(SHARDS),
            len: AtomicUsize::new(0),
            rejected: RejectedTokens::new(rejected_tokens::DEFAULT_ENTRIES, metrics.clone()),
            metrics,
            #[cfg(debug_assertions)]
            panic_on_token: std::env::var(PANIC_ON_TOKEN_VARIABLE).ok().filter(|token| !token.is_empty()),
        }
    }

    /// The same cache, remembering at most `capacity` rejected tokens (0: none).
    pub fn with_rejected_capacity(self, capacity: usize) -> Self {
        Self { rejected: RejectedTokens::new(capacity, self.metrics.clone()), ..self }
    }

    /// The rejected tokens remembered.
    pub fn rejected(&self) -> &RejectedTokens {
        &self.rejected
    }

    /// Panics when `token` is the one [`PANIC_ON_TOKEN_VARIABLE`] names (debug builds only).
    #[cfg(debug_assertions)]
    #[expect(clippy::panic, reason = "fault injection in debug builds: a bug inside a check, on request")]
    fn panic_if_asked(&self, token: &str) {
        if self.panic_on_token.as_deref() == Some(token) {
            panic!("fault injection: the token named by {PANIC_ON_TOKEN_VARIABLE}");
        }
    }

    /// Where a token's hot slot is in every stripe's layer, picked by its last bytes (the end of
    /// its signature); a hit still compares every byte.
    fn hot_slot_index(&self, token: &str) -> Option<usize> {
        let bytes = token.as_bytes();
        let tail = bytes.get(bytes.len().saturating_sub(16)..).unwrap_or(bytes);
        let slots = u64::try_from(self.hot_slots).ok()?.max(1);
        usize::try_from(self.hot_index.hash_one(tail) % slots).ok()
    }

    /// The slot at `index` of `layer`.
    fn hot_slot_at(layer: &HotLayer, index: usize) -> Option<&HotSlot> {
        layer.get(index / SLOTS_PER_LINE)?.get(index % SLOTS_PER_LINE)
    }

    /// A token's hot slot in the calling thread's stripe.
    fn hot_slot(&self, token: &str) -> Option<&HotSlot> {
        Self::hot_slot_at(self.hot.get(stripes::current())?, self.hot_slot_index(token)?)
    }

    /// Every slot of every stripe.
    fn every_hot_slot(&self) -> impl Iterator<Item = &HotSlot> {
        self.hot.iter().flat_map(|layer| layer.iter()).flat_map(|line| line.iter())
    }

    fn hot_get(&self, token: &str) -> Option<Arc<Identity>> {
        let slot = self.hot_slot(token)?.lock().ok()?;
        slot.as_ref().filter(|entry| &*entry.token == token).map(|entry| entry.identity.clone())
    }

    /// Moves `token` into the calling thread's stripe, with a copy of `identity` of its own.
    fn hot_put(&self, token: &str, identity: &Identity) {
        if let Some(mut slot) = self.hot_slot(token).and_then(|slot| slot.lock().ok()) {
            *slot = Some(HotEntry { token: token.into(), identity: Arc::new(identity.clone()) });
        }
    }

    /// A token verified again (after a reload that reads other claims, say) leaves every
    /// stripe's hot layer, which would otherwise keep handing out the identity that no longer
    /// counts; its next hit by digest moves the new identity in.
    fn hot_forget(&self, token: &str) {
        let Some(index) = self.hot_slot_index(token) else { return };
        for slot in self.hot.iter().filter_map(|layer| Self::hot_slot_at(layer, index)) {
            if let Ok(mut slot) = slot.lock()
                && slot.as_ref().is_some_and(|entry| &*entry.token == token)
            {
                *slot = None;
            }
        }
    }

    #[expect(clippy::indexing_slicing, reason = "there are `SHARDS` shards, and the index is taken modulo `SHARDS`")]
    fn shard(&self, key: &TokenDigest) -> &Shard {
        &self.shards[usize::from(key.0[0]) % SHARDS]
    }

    /// Forgets the tokens of `issuer` signed by keys that are no longer in `keys` under the
    /// same `kid`: a key rotated out, or swapped for another behind the same `kid`; from the
    /// shards and from every stripe's hot layer.
    pub fn retain_keys(&self, issuer: &str, keys: &KeySet) {
        let vouched = |identity: &Identity| identity.issuer() != issuer || identity.is_vouched_for_by_keys(keys);
        for slot in self.every_hot_slot() {
            if let Ok(mut slot) = slot.lock()
                && slot.as_ref().is_some_and(|entry| !vouched(&entry.identity))
            {
                *slot = None;
            }
        }
        for shard in self.shards.iter() {
            if let Ok(mut entries) = shard.lock() {
                let before = entries.map.len();
                entries.map.retain(|_, identity| vouched(identity));
                self.len.fetch_sub(before - entries.map.len(), Ordering::Relaxed);
            }
        }
        self.metrics.record_token_cache_size(self.len());
    }

    /// Tokens held now, by digest (the hot layers hold copies of tokens seen again).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl VerifiedTokenCache {
    /// The authentication the identity remembered for the credential's token gives, when it
    /// still counts (see [`Credential::recalled`]), else the refusal remembered for it, when
    /// that still holds; `None`: the token must be read and verified.
    pub fn recall<'p>(
        &self,
        key: &TokenKey<'_>,
        credential: &Credential<'p>,
        context: &AuthnContext<'_>,
    ) -> Option<Authentication<'p>> {
        self.get(key)
            .and_then(|identity| credential.recalled(identity, context))
            .or_else(|| self.rejected.recall(key, credential, context))
    }

    /// Reads the credential's token ([`Credential::read`]); a token refused for its own
    /// fault is remembered as refused.
    pub fn read<'p>(
        &self,
        key: &TokenKey<'_>,
        credential: &Credential<'p>,
        max_token_bytes: usize,
    ) -> Result<UnverifiedToken<'p>, Authentication<'p>> {
        credential.read(max_token_bytes).map_err(|error| self.rejected.remember_reading(key, error))
    }

    /// Verifies `token` with `keys` ([`UnverifiedToken::verify`]), and remembers the identity
    /// it finds, or its refusal when that holds until the token's rule or keys change.
    pub fn verify<'p>(
        &self,
        key: &TokenKey<'_>,
        token: &UnverifiedToken<'p>,
        keys: Option<&KeySet>,
        context: &AuthnContext<'_>,
    ) -> Authentication<'p> {
        let authentication = token.verify(keys, context);
        match &authentication {
            Authentication::Verified { identity, .. } => self.put(key, identity.clone()),
            refused => self.rejected.remember_verification(key, token, keys, refused),
        }
        authentication
    }

    /// A credential authenticated as the engine resolves it, but with the keys `context` has
    /// now and no fetch: remembered, or read, verified and remembered (benches, tests, offline
    /// checks).
    pub fn authenticate<'p>(&self, credential: &Credential<'p>, context: &AuthnContext<'_>) -> Authentication<'p> {
        let key = TokenKey::new(credential.token());
        if let Some(recalled) = self.recall(&key, credential, context) {
            return recalled;
        }
        match self.read(&key, credential, context.max_token_bytes) {
            Ok(token) => self.verify(&key, &token, token.key_set(context.keys).as_deref(), context),
            Err(refused) => refused,
        }
    }

    /// The calling thread's hot layer first; a token found by its digest is seen again, and
    /// moves into it.
    pub fn get(&self, key: &TokenKey<'_>) -> Option<Arc<Identity>> {
        #[cfg(debug_assertions)]
        self.panic_if_asked(key.token());
        if self.capacity_per_shard == 0 {
            return None;
        }
        let found = self.hot_get(key.token()).or_else(|| {
            let digest = key.digest();
            let found = self.shard(&digest).lock().ok().and_then(|entries| entries.map.get(&digest).cloned())?;
            self.hot_put(key.token(), &found);
            Some(found)
        });
        self.metrics.record_token_cache_lookup(found.is_some());
        found
    }

    /// A token just verified goes into the shards only: one seen once does not displace the
    /// hot layer's. A hot token verified again leaves every hot layer.
    pub fn put(&self, token: &TokenKey<'_>, identity: Arc<Identity>) {
        if self.capacity_per_shard == 0 {
            return;
        }
        self.insert(token.digest(), identity);
        self.hot_forget(token.token());
    }

    /// Keeps `identity` under `key` in its shard, making room when the shard is full.
    fn insert(&self, key: TokenDigest, identity: Arc<Identity>) {
        let Ok(mut guard) = self.shard(&key).lock() else { return };
        let entries = &mut *guard;
        let before = entries.map.len();
        let now = unix_now();
        if before >= self.capacity_per_shard && now > entries.swept_at_secs {
            // Full: sweep out expired tokens, at most once a second, so that a cache full of
            // live tokens does not scan a shard on every insert.
            entries.swept_at_secs = now;
            entries.map.retain(|_, entry| entry.expires_at().is_none_or(|exp| exp > now as f64));
        }
        if entries.map.len() >= self.capacity_per_shard {
            // Still full of live tokens: make room by forgetting an arbitrary one.
            if let Some(victim) = entries.map.keys().next().copied() {
                entries.map.remove(&victim);
            }
        }
        entries.map.insert(key, identity);
        let after = entries.map.len();
        drop(guard);
        if after >= before {
            self.len.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.len.fetch_sub(before - after, Ordering::Relaxed);
        }
        self.metrics.record_token_cache_size(self.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::authn::{self, KeyLookup, KeySource};
    use crate::core::identity::ClaimPaths;
    use crate::core::jwt::JwtError;
    use crate::core::test_util;
    use jsonwebtoken::Algorithm;
    use serde_json::{Map, Value, json};

    fn identity(exp: u64) -> Arc<Identity> {
        let Value::Object(claims) = json!({"iss": "https://idp", "sub": "u", "exp": exp}) else { unreachable!() };
        let claims: Map<String, Value> = claims;
        Arc::new(Identity::for_tests(&claims, &Arc::new(ClaimPaths::default()), Arc::from(Vec::new())))
    }

    fn key(token: &str) -> TokenKey<'_> {
        TokenKey::new(token)
    }

    /// Empties the shards, so that only the hot layer can answer.
    fn forget_shards(cache: &VerifiedTokenCache) {
        for shard in cache.shards.iter() {
            shard.lock().expect("lock").map.clear();
        }
    }

    #[test]
    fn a_full_cache_stays_bounded_and_keeps_the_newest_token() {
        let cache = VerifiedTokenCache::new(32, Arc::new(Metrics::new()));
        let live = unix_now() + 3600;
        for serial in 0..1000 {
            let token = format!("token-{serial}");
            cache.put(&key(&token), identity(live));
            assert!(cache.get(&key(&token)).is_some(), "token {serial} was just put");
            assert!(cache.len() <= 32, "{} entries after {serial}", cache.len());
        }
    }

    #[test]
    fn expired_tokens_make_room_before_live_ones() {
        // Two entries a shard; three tokens of shard 0: one expired, then two live.
        let cache = VerifiedTokenCache::new(2 * SHARDS, Arc::new(Metrics::new()));
        let mut same_shard = (0..)
            .map(|serial| format!("t-{serial}"))
            .filter(|token| usize::from(TokenDigest::of(token).0[0]) % SHARDS == 0);
        let mut next = || same_shard.next().expect("endless");
        let (expired, first, second) = (next(), next(), next());
        cache.put(&key(&expired), identity(1));
        cache.put(&key(&first), identity(unix_now() + 3600));
        cache.put(&key(&second), identity(unix_now() + 3600));
        assert!(cache.get(&key(&expired)).is_none(), "the expired token went");
        assert!(cache.get(&key(&first)).is_some() && cache.get(&key(&second)).is_some(), "both live tokens stay");
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_token_seen_again_is_found_by_its_bytes_without_its_digest() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let token = "header.payload.signature-of-the-real-token";
        cache.put(&key(token), identity(unix_now() + 3600));
        forget_shards(&cache);
        assert!(cache.get(&key(token)).is_none(), "seen once: not in the hot layer");

        cache.put(&key(token), identity(unix_now() + 3600));
        assert!(cache.get(&key(token)).is_some(), "seen again: found by digest, and moved to the hot layer");
        forget_shards(&cache);
        let again = key(token);
        assert!(cache.get(&again).is_some(), "found in the hot layer");
        assert!(again.digest.get().is_none(), "by comparing bytes: no SHA-256 computed");
    }

    #[test]
    fn a_forged_token_sharing_a_hot_tokens_slot_is_not_a_hit() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let token = "header.payload.signature-of-the-real-token";
        cache.put(&key(token), identity(unix_now() + 3600));
        assert!(cache.get(&key(token)).is_some());
        forget_shards(&cache);
        // The same last 16 bytes pick the same slot; the other bytes differ.
        for forged in ["header.forged!.signature-of-the-real-token", "signature-of-the-real-token", "x"] {
            assert!(cache.get(&key(forged)).is_none(), "{forged}");
        }
        assert!(cache.get(&key(token)).is_some(), "the real token is still hot");
    }

    #[test]
    fn a_hot_token_verified_again_hands_out_its_new_identity() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let token = "header.payload.signature-of-the-real-token";
        let live = unix_now() + 3600;
        cache.put(&key(token), identity(live));
        assert!(cache.get(&key(token)).is_some(), "now hot");
        let again = Arc::new(Arc::unwrap_or_clone(identity(live)).signed_by("new"));
        cache.put(&key(token), again.clone());
        assert!(cache.hot_get(token).is_none(), "verified again: out of the hot layer");
        assert_eq!(cache.get(&key(token)).as_deref(), Some(&*again), "found by digest, as verified last");
        assert_eq!(cache.hot_get(token).as_deref(), Some(&*again), "and hot again, as verified last");
    }

    /// Runs `first` on one thread per stripe, then `between` on this thread, then `then` on
    /// each of those threads again: which stripe each thread had, with what `then` returned.
    fn across_stripes<R: Send>(
        first: impl Fn() + Sync,
        between: impl FnOnce(),
        then: impl Fn() -> R + Sync,
    ) -> Vec<(usize, R)> {
        let barrier = std::sync::Barrier::new(STRIPES + 1);
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..STRIPES)
                .map(|_| {
                    scope.spawn(|| {
                        first();
                        barrier.wait();
                        barrier.wait();
                        (stripes::current(), then())
                    })
                })
                .collect();
            barrier.wait();
            between();
            barrier.wait();
            threads.into_iter().map(|thread| thread.join().expect("no panic")).collect()
        })
    }

    /// The distinct stripes of `results`, asserting there are several: a sweep of one stripe
    /// would leave the others.
    fn several_stripes<R>(results: &[(usize, R)]) -> Vec<usize> {
        let mut stripes: Vec<usize> = results.iter().map(|(stripe, _)| *stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        assert!(stripes.len() >= 2, "the threads shared one stripe: {stripes:?}");
        stripes
    }

    #[test]
    fn each_stripe_hands_out_its_own_copy_of_a_hot_identity() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let token = "header.payload.signature-of-a-service-account";
        let verified = identity(unix_now() + 3600);
        cache.put(&key(token), verified.clone());
        let held = across_stripes(
            || {
                assert!(cache.get(&key(token)).is_some(), "found by digest, moved to this stripe");
            },
            || {},
            || {
                let (first, second) = (cache.get(&key(token)), cache.get(&key(token)));
                (first.zip(second).is_some_and(|(first, second)| Arc::ptr_eq(&first, &second)), cache.hot_get(token))
            },
        );
        let stripes = several_stripes(&held);
        let copies: Vec<(usize, Arc<Identity>)> = stripes
            .iter()
            .filter_map(|stripe| held.iter().find(|(held_by, _)| held_by == stripe))
            .map(|(stripe, (same_twice, hot))| {
                assert!(same_twice, "stripe {stripe}: two hits, the same copy");
                (*stripe, hot.clone().expect("hot"))
            })
            .collect();
        for (stripe, copy) in &copies {
            assert_eq!(**copy, *verified, "stripe {stripe} holds the identity verified");
            assert!(!Arc::ptr_eq(copy, &verified), "stripe {stripe} holds a copy, not the shards' identity");
            for (other, other_copy) in copies.iter().filter(|(other, _)| other != stripe) {
                assert!(!Arc::ptr_eq(copy, other_copy), "stripes {stripe} and {other} share a copy");
            }
        }
    }

    #[test]
    fn a_removed_key_stops_its_token_being_served_from_every_stripe() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let token = "signed.by.a-key-rotated-out";
        cache.put(&key(token), Arc::new(Arc::unwrap_or_clone(identity(unix_now() + 3600)).signed_by("old")));
        let served_after = across_stripes(
            || {
                assert!(cache.get(&key(token)).is_some(), "found by digest, moved to this stripe");
                assert!(cache.get(&key(token)).is_some() && cache.hot_get(token).is_some(), "hot on this stripe");
            },
            || cache.retain_keys("https://idp", &KeySet::from_jwks_json(r#"{"keys":[]}"#).expect("an empty set")),
            || cache.get(&key(token)).is_some(),
        );
        several_stripes(&served_after);
        let serving: Vec<usize> =
            served_after.iter().filter(|(_, served)| *served).map(|(stripe, _)| *stripe).collect();
        assert!(serving.is_empty(), "still served from stripes {serving:?}");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_token_verified_again_leaves_every_stripes_hot_layer() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let token = "header.payload.signature-of-a-service-account";
        let live = unix_now() + 3600;
        cache.put(&key(token), Arc::new(Arc::unwrap_or_clone(identity(live)).signed_by("old")));
        let again = Arc::new(Arc::unwrap_or_clone(identity(live)).signed_by("new"));
        let kids_after = across_stripes(
            || {
                assert!(cache.get(&key(token)).is_some() && cache.hot_get(token).is_some(), "hot on this stripe");
            },
            || cache.put(&key(token), again.clone()),
            || cache.get(&key(token)).and_then(|identity| identity.kid().map(str::to_owned)),
        );
        several_stripes(&kids_after);
        for (stripe, kid) in &kids_after {
            assert_eq!(kid.as_deref(), Some("new"), "stripe {stripe} hands out the identity verified last");
        }
    }

    #[test]
    fn a_hot_slot_fills_a_quarter_of_a_padded_line() {
        assert_eq!(std::mem::size_of::<HotSlot>() * SLOTS_PER_LINE, std::mem::size_of::<HotLine>());
    }

    /// The fetched keys of one issuer, swapped by the test as a refresh would.
    #[derive(Default)]
    struct FetchedKeys(Mutex<Option<Arc<KeySet>>>);

    impl KeyLookup for FetchedKeys {
        fn key_set(&self, _issuer: &str) -> Option<Arc<KeySet>> {
            self.0.lock().expect("lock").clone()
        }
    }

    fn keys_of(file: &str) -> KeySet {
        KeySet::from_jwks_json(&test_util::jwks(&[(file, Algorithm::RS256, "rsa")])).expect("jwks")
    }

    #[test]
    fn a_hot_token_is_refused_once_the_fetched_key_behind_its_kid_is_swapped() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let fetched = FetchedKeys::default();
        *fetched.0.lock().expect("lock") = Some(Arc::new(keys_of("rsa-2048.pem")));
        let mut remote = (*test_util::rule(&[])).clone();
        remote.keys = KeySource::Remote { filed_under: test_util::ISSUER.into(), jwks_uri: None, timeout: None };
        let rule = Arc::new(remote.keeping(&test_util::rule(&[]).verifier.kept));
        let context = AuthnContext { keys: &fetched, now: test_util::NOW, clock_skew_secs: 0, max_token_bytes: 8192 };
        let verify = |token: &str| {
            let headers = [test_util::bearer(token)];
            let http = test_util::request_with(&headers);
            let credentials = authn::find_credentials(&[&rule], &http);
            let authentication = credentials.map_or(Authentication::Anonymous, |credentials| {
                credentials.authenticate_with(|credential| cache.authenticate(credential, &context))
            });
            Ok(authentication.caller()?.map_or_else(|| "anonymous".into(), |identity| identity.subject().to_string()))
        };
        let claims = test_util::claims();
        let stolen = test_util::sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims);
        for _ in 0..3 {
            assert_eq!(verify(&stolen).as_deref(), Ok("alice"));
        }
        assert!(cache.hot_get(&stolen).is_some(), "seen again: in the hot layer");
        // The IdP replaces the stolen key, keeping its `kid`; the cache is not told (no fetch ran
        // through the key store), so the hit itself must notice.
        *fetched.0.lock().expect("lock") = Some(Arc::new(keys_of("rsa-2048-other.pem")));
        assert_eq!(verify(&stolen), Err(JwtError::VerificationFails), "a token of the replaced key");
        let fresh = test_util::sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &claims);
        assert_eq!(verify(&fresh).as_deref(), Ok("alice"), "a token of the new key");
    }

    #[test]
    fn a_key_swapped_behind_its_kid_takes_its_tokens_out_of_both_layers() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let old_keys = keys_of("rsa-2048.pem");
        let token = "signed.by.the-old-key";
        let signed = Arc::new(Arc::unwrap_or_clone(identity(unix_now() + 3600)).signed_with(&old_keys.keys[0]));
        cache.put(&key(token), signed);
        assert!(cache.get(&key(token)).is_some(), "now hot");
        cache.retain_keys("https://idp", &old_keys);
        assert!(cache.get(&key(token)).is_some(), "the same key under the same kid keeps it");
        cache.retain_keys("https://idp", &keys_of("rsa-2048-other.pem"));
        assert!(cache.get(&key(token)).is_none(), "another key under the same kid");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_rotated_out_key_takes_its_tokens_out_of_both_layers() {
        let cache = VerifiedTokenCache::new(1000, Arc::new(Metrics::new()));
        let live = unix_now() + 3600;
        let (old, kept) = ("signed.by.old-key", "signed.by.kept-key");
        for (token, kid) in [(old, "old"), (kept, "kept")] {
            cache.put(&key(token), Arc::new(Arc::unwrap_or_clone(identity(live)).signed_by(kid)));
            assert!(cache.get(&key(token)).is_some(), "{token} is hot");
        }
        let keys = KeySet::from_jwks_json(r#"{"keys":[]}"#).expect("an empty set");
        cache.retain_keys("https://other-idp", &keys);
        assert!(cache.get(&key(old)).is_some(), "another issuer's rotation keeps it");
        cache.retain_keys("https://idp", &keys);
        assert!(cache.get(&key(old)).is_none() && cache.get(&key(kept)).is_none(), "neither key is in the set");
        assert_eq!(cache.len(), 0);
    }
}
