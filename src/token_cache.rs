//! The verified-token cache: a token seen again costs a hash and a lookup, not a signature check. Bounded; entries expire with their token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;

use crate::core::authn::{TokenCache, VerifiedToken};
use crate::core::jwt::KeySet;
use crate::telemetry::Metrics;

const SHARDS: usize = 16;

type TokenHash = [u8; 32];
type Shard = Mutex<HashMap<TokenHash, Arc<VerifiedToken>>>;

/// Verified tokens by SHA-256 of the token, in shards to keep lock hold times short.
#[derive(Debug)]
pub struct VerifiedTokenCache {
    shards: Box<[Shard]>,
    capacity_per_shard: usize,
    len: AtomicUsize,
    metrics: Arc<Metrics>,
}

fn hash(token: &str) -> TokenHash {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

impl VerifiedTokenCache {
    /// A cache of at most `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { shards, capacity_per_shard: capacity.div_ceil(SHARDS), len: AtomicUsize::new(0), metrics }
    }

    fn shard(&self, key: &TokenHash) -> &Shard {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// Forgets the tokens of `issuer` signed by keys that are no longer in `keys`.
    pub fn retain_keys(&self, issuer: &str, keys: &KeySet) {
        for shard in self.shards.iter() {
            if let Ok(mut entries) = shard.lock() {
                let before = entries.len();
                entries.retain(|_, verified| {
                    &*verified.issuer != issuer || verified.kid.as_deref().is_none_or(|kid| keys.has_kid(kid))
                });
                self.len.fetch_sub(before - entries.len(), Ordering::Relaxed);
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
    fn get(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        if self.capacity_per_shard == 0 {
            return None;
        }
        let key = hash(token);
        let found = self.shard(&key).lock().ok().and_then(|entries| entries.get(&key).cloned());
        self.metrics.record_token_cache_lookup(found.is_some());
        found
    }

    fn put(&self, token: &str, verified: Arc<VerifiedToken>) {
        if self.capacity_per_shard == 0 {
            return;
        }
        let key = hash(token);
        let Ok(mut entries) = self.shard(&key).lock() else { return };
        let before = entries.len();
        if entries.len() >= self.capacity_per_shard {
            let now = unix_now();
            entries.retain(|_, entry| entry.expires_at.is_none_or(|exp| exp > now));
        }
        if entries.len() >= self.capacity_per_shard {
            // Still full of live tokens: make room by forgetting an arbitrary one.
            if let Some(victim) = entries.keys().next().copied() {
                entries.remove(&victim);
            }
        }
        entries.insert(key, verified);
        let after = entries.len();
        drop(entries);
        if after >= before {
            self.len.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.len.fetch_sub(before - after, Ordering::Relaxed);
        }
        self.metrics.record_token_cache_size(self.len());
    }
}
