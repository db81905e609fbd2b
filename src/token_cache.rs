//! The verified-token cache: a token seen again costs a hash and a lookup, not a signature check. Bounded; entries expire with their token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::Identity;
use crate::core::authn::{TokenCache, TokenDigest};
use crate::core::jwt::KeySet;
use crate::telemetry::Metrics;

const SHARDS: usize = 16;

type Shard = Mutex<ShardEntries>;

/// One shard's tokens, and when its expired ones were last swept out.
#[derive(Debug, Default)]
struct ShardEntries {
    map: HashMap<TokenDigest, Arc<Identity>>,
    swept_at_secs: u64,
}

/// Verified tokens by SHA-256 of the token, in shards to keep lock hold times short.
#[derive(Debug)]
pub struct VerifiedTokenCache {
    shards: Box<[Shard]>,
    capacity_per_shard: usize,
    len: AtomicUsize,
    metrics: Arc<Metrics>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

impl VerifiedTokenCache {
    /// A cache of at most `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::default()).collect();
        Self { shards, capacity_per_shard: capacity.div_ceil(SHARDS), len: AtomicUsize::new(0), metrics }
    }

    fn shard(&self, key: &TokenDigest) -> &Shard {
        &self.shards[usize::from(key.0[0]) % SHARDS]
    }

    /// Forgets the tokens of `issuer` signed by keys that are no longer in `keys`.
    pub fn retain_keys(&self, issuer: &str, keys: &KeySet) {
        for shard in self.shards.iter() {
            if let Ok(mut entries) = shard.lock() {
                let before = entries.map.len();
                entries.map.retain(|_, identity| {
                    identity.issuer() != issuer || identity.kid().is_none_or(|kid| keys.has_kid(kid))
                });
                self.len.fetch_sub(before - entries.map.len(), Ordering::Relaxed);
            }
        }
        self.metrics.record_token_cache_size(self.len());
    }

    /// Tokens held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenCache for VerifiedTokenCache {
    fn remembers(&self) -> bool {
        self.capacity_per_shard > 0
    }

    fn get(&self, key: &TokenDigest) -> Option<Arc<Identity>> {
        if !self.remembers() {
            return None;
        }
        let found = self.shard(key).lock().ok().and_then(|entries| entries.map.get(key).cloned());
        self.metrics.record_token_cache_lookup(found.is_some());
        found
    }

    fn put(&self, key: TokenDigest, identity: Arc<Identity>) {
        if !self.remembers() {
            return;
        }
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
    use crate::core::identity::ClaimPaths;
    use serde_json::{Map, Value, json};

    fn identity(exp: u64) -> Arc<Identity> {
        let Value::Object(claims) = json!({"iss": "https://idp", "sub": "u", "exp": exp}) else { unreachable!() };
        let claims: Map<String, Value> = claims;
        Arc::new(Identity::for_tests(&claims, &Arc::new(ClaimPaths::default()), Arc::from(Vec::new())))
    }

    #[test]
    fn a_full_cache_stays_bounded_and_keeps_the_newest_token() {
        let cache = VerifiedTokenCache::new(32, Arc::new(Metrics::new()));
        let live = unix_now() + 3600;
        for serial in 0..1000 {
            let token = TokenDigest::of(&format!("token-{serial}"));
            cache.put(token, identity(live));
            assert!(cache.get(&token).is_some(), "token {serial} was just put");
            assert!(cache.len() <= 32, "{} entries after {serial}", cache.len());
        }
    }

    #[test]
    fn expired_tokens_make_room_before_live_ones() {
        // Two entries a shard; three tokens of shard 0: one expired, then two live.
        let cache = VerifiedTokenCache::new(2 * SHARDS, Arc::new(Metrics::new()));
        let mut same_shard = (0..)
            .map(|serial| TokenDigest::of(&format!("t-{serial}")))
            .filter(|token| usize::from(token.0[0]) % SHARDS == 0);
        let mut next = || same_shard.next().expect("endless");
        let (expired, first, second) = (next(), next(), next());
        cache.put(expired, identity(1));
        cache.put(first, identity(unix_now() + 3600));
        cache.put(second, identity(unix_now() + 3600));
        assert!(cache.get(&expired).is_none(), "the expired token went");
        assert!(cache.get(&first).is_some() && cache.get(&second).is_some(), "both live tokens stay");
        assert_eq!(cache.len(), 2);
    }
}
