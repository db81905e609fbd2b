//! The verified-token cache: a token seen again costs a hash and a lookup, not a signature check; a token seen often, a byte comparison. Bounded; entries expire with their token; never decides.

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
use crate::telemetry::Metrics;

const SHARDS: usize = 16;
/// Slots of the hot layer, which holds tokens seen at least twice by their bytes, so that a
/// token sent again and again (a service account's, a busy session's) is found by comparing
/// bytes instead of computing its SHA-256. About 1.5 KiB a slot for Keycloak's tokens.
const HOT_SLOTS: usize = 256;

type Shard = Mutex<ShardEntries>;

/// One shard's tokens, and when its expired ones were last swept out.
#[derive(Debug, Default)]
struct ShardEntries {
    map: HashMap<TokenDigest, Arc<Identity>>,
    swept_at_secs: u64,
}

/// A token of the hot layer, whole, and its identity.
#[derive(Debug)]
struct HotEntry {
    token: Box<str>,
    identity: Arc<Identity>,
}

type HotSlot = Mutex<Option<HotEntry>>;

/// Verified tokens by SHA-256 of the token, in shards to keep lock hold times short, with the
/// tokens seen again in a direct-mapped hot layer in front; and, apart, so that bad tokens never
/// displace good ones, the tokens refused for what they are.
#[derive(Debug)]
pub struct VerifiedTokenCache {
    hot: Box<[HotSlot]>,
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
        let hot = (0..HOT_SLOTS.min(capacity)).map(|_| Mutex::default()).collect();
        Self {
            hot,
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

    /// A token's hot slot, picked by its last bytes (the end of its signature); a hit still
    /// compares every byte.
    fn hot_slot(&self, token: &str) -> Option<&HotSlot> {
        let bytes = token.as_bytes();
        let tail = bytes.get(bytes.len().saturating_sub(16)..).unwrap_or(bytes);
        let slots = u64::try_from(self.hot.len()).ok()?.max(1);
        self.hot.get(usize::try_from(self.hot_index.hash_one(tail) % slots).ok()?)
    }

    fn hot_get(&self, token: &str) -> Option<Arc<Identity>> {
        let slot = self.hot_slot(token)?.lock().ok()?;
        slot.as_ref().filter(|entry| &*entry.token == token).map(|entry| entry.identity.clone())
    }

    fn hot_put(&self, token: &str, identity: &Arc<Identity>) {
        if let Some(mut slot) = self.hot_slot(token).and_then(|slot| slot.lock().ok()) {
            *slot = Some(HotEntry { token: token.into(), identity: identity.clone() });
        }
    }

    /// A token verified again (after a reload that reads other claims, say) replaces its hot
    /// entry, which would otherwise keep handing out the identity that no longer counts.
    fn hot_refresh(&self, token: &str, identity: &Arc<Identity>) {
        if let Some(mut slot) = self.hot_slot(token).and_then(|slot| slot.lock().ok())
            && let Some(entry) = slot.as_mut().filter(|entry| &*entry.token == token)
        {
            entry.identity = identity.clone();
        }
    }

    #[expect(clippy::indexing_slicing, reason = "there are `SHARDS` shards, and the index is taken modulo `SHARDS`")]
    fn shard(&self, key: &TokenDigest) -> &Shard {
        &self.shards[usize::from(key.0[0]) % SHARDS]
    }

    /// Forgets the tokens of `issuer` signed by keys that are no longer in `keys` under the
    /// same `kid`: a key rotated out, or swapped for another behind the same `kid`.
    pub fn retain_keys(&self, issuer: &str, keys: &KeySet) {
        let vouched = |identity: &Identity| identity.issuer() != issuer || identity.is_vouched_for_by_keys(keys);
        for slot in self.hot.iter() {
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

    /// Tokens held now.
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

    /// The hot layer first; a token found by its digest is seen again, and moves into it.
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
    /// hot layer's. A hot token verified again has its hot entry replaced.
    pub fn put(&self, token: &TokenKey<'_>, identity: Arc<Identity>) {
        if self.capacity_per_shard == 0 {
            return;
        }
        self.hot_refresh(token.token(), &identity);
        let key = token.digest();
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
        let hit = cache.get(&key(token)).expect("hot");
        assert!(Arc::ptr_eq(&hit, &again), "the hot entry holds the identity verified last");
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
