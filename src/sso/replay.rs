//! What the provider names a back-channel logout by (its session ids, subjects, logout-token ids), hashed so that a store holds none of them in clear, and the logout tokens this replica already accepted, each remembered while it could still be accepted; bounded, time an input, never holds a token.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};

/// The SHA-256 of one of the provider's names (a `sid`, `sub` or `jti`) and its issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashedName([u8; 32]);

impl HashedName {
    /// The hash of `value` as the provider `issuer` gives it under `kind` (`sid`, `sub`, `jti`):
    /// the same value under another kind or issuer hashes apart.
    pub fn of(issuer: &str, kind: &str, value: &str) -> Self {
        let mut context = Context::new(&SHA256);
        for part in [issuer, kind, value] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        let mut bytes = [0; 32];
        for (slot, byte) in bytes.iter_mut().zip(context.finish().as_ref()) {
            *slot = *byte;
        }
        Self(bytes)
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// The ids of the logout tokens accepted by this replica, each until its window ends. Full, it
/// forgets the one whose window ends first: a replay then ends sessions that are ended already.
#[derive(Debug)]
pub struct SeenTokenIds {
    until: Mutex<HashMap<HashedName, Instant>>,
    max_ids: usize,
}

impl SeenTokenIds {
    /// Remembers at most `max_ids` ids (at least one).
    pub fn new(max_ids: usize) -> Self {
        Self { until: Mutex::new(HashMap::new()), max_ids: max_ids.max(1) }
    }

    /// True the first time `id` is offered within `window` from `now`; false for a replay.
    pub fn first_use(&self, id: HashedName, window: Duration, now: Instant) -> bool {
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        until.retain(|_, end| *end > now);
        if until.contains_key(&id) {
            return false;
        }
        if until.len() >= self.max_ids
            && let Some(soonest) = until.iter().min_by_key(|(_, end)| **end).map(|(name, _)| *name)
        {
            until.remove(&soonest);
        }
        until.insert(id, now + window);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_id_is_accepted_once_within_its_window_and_again_after_it() {
        let seen = SeenTokenIds::new(10);
        let start = Instant::now();
        let id = HashedName::of("https://idp", "jti", "j-1");
        let window = Duration::from_secs(60);
        assert!(seen.first_use(id, window, start));
        assert!(!seen.first_use(id, window, start + Duration::from_secs(59)), "a replay");
        assert!(seen.first_use(id, window, start + Duration::from_secs(60)), "its token is refused by `iat` by now");
        assert!(seen.first_use(HashedName::of("https://idp", "jti", "j-2"), window, start));
    }

    #[test]
    fn a_full_memory_forgets_the_id_whose_window_ends_first() {
        let seen = SeenTokenIds::new(2);
        let now = Instant::now();
        let [short, long, third] = ["a", "b", "c"].map(|jti| HashedName::of("https://idp", "jti", jti));
        assert!(seen.first_use(short, Duration::from_secs(10), now));
        assert!(seen.first_use(long, Duration::from_secs(100), now));
        assert!(seen.first_use(third, Duration::from_secs(100), now));
        assert!(!seen.first_use(long, Duration::from_secs(100), now), "kept");
        assert!(!seen.first_use(third, Duration::from_secs(100), now), "kept");
    }

    #[test]
    fn names_hash_apart_by_issuer_and_kind_and_never_show_their_value() {
        let sid = HashedName::of("https://idp", "sid", "abc");
        assert_ne!(sid, HashedName::of("https://idp", "sub", "abc"));
        assert_ne!(sid, HashedName::of("https://other", "sid", "abc"));
        assert_ne!(HashedName::of("a", "bc", "d"), HashedName::of("ab", "c", "d"), "lengths are hashed too");
        assert_eq!(sid.to_hex().len(), 64);
        assert!(!sid.to_hex().contains("abc"));
    }
}
