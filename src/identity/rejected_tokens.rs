//! The rejected-token cache: a token refused for what it is (unreadable, a signature its rule's keys do not verify, claims its rule refuses) is refused again for a hash and a probe, until its rule or its issuer's keys change; bounded; never decides.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::core::authn::{Authentication, AuthnContext, Credential, JwtRule, UnverifiedToken};
use crate::core::jwt::{JwtError, KeySet, KeySetFingerprint, Lifetime};
use crate::identity::token_cache::{TokenDigest, TokenKey};
use crate::telemetry::Metrics;

/// Rejections remembered unless `rejected_token_cache_entries` says otherwise. A repeated bad
/// token is most often one of a few (a client retrying an expired token, a misconfigured one
/// signing with the wrong key), so ten thousand cover many such clients at about 100 bytes
/// each, 1 MiB in all; a flood of distinct tokens gains nothing from a larger bound, since each
/// of its tokens is new.
pub const DEFAULT_ENTRIES: usize = 10_000;

/// The most shards a large cache is split into.
const MAX_SHARDS: usize = 16;

/// The fewest entries a shard is made for: a cache of fewer than twice this is one shard, whose
/// bound is reached exactly, where shards filled at random by digest would leave some room unused.
const MIN_ENTRIES_PER_SHARD: usize = 512;

/// A token's refusal, and what it rests on: while that holds, verifying the token again gives
/// the same refusal.
#[derive(Debug)]
enum Rejection {
    /// Refused before its rule or keys were looked at (not three parts, undecodable, a refused
    /// algorithm or header, claims of the wrong type, too long): every rule refuses it so.
    Unreadable(JwtError),
    /// Refused by `rule`'s verification with the keys whose fingerprint is `keys`. The rule is
    /// held weakly, for its address only: a reload that compiles the rule again, or a rotation
    /// of its keys, makes the token be verified again.
    Verified { rule: Weak<JwtRule>, keys: KeySetFingerprint, refusal: Refusal },
}

/// What a verification refused, in the core's order: the signature, then the lifetime, then
/// the audience ([`UnverifiedToken::verify`]).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// No key verified the signature (or the claims held no lifetime): `VerificationFails`,
    /// under the same rule and keys, at any time.
    Signature,
    /// The signature verified and the claims were refused: the lifetime is judged again at each
    /// check, as the core would, then the audience, which the rule refused when
    /// `audience_refused`; a token that would pass both now (the clock stepped back, `nbf`
    /// reached) is verified again.
    Claims { lifetime: Lifetime, audience_refused: bool },
}

impl Rejection {
    /// The refusal `outcome` (the verification of `token` with `keys`) is, when it holds until
    /// the rule or the keys change. Not remembered: a token verified, a key not found (a
    /// refetch may bring it), keys not fetched yet.
    fn of_verification(
        token: &UnverifiedToken<'_>,
        keys: Option<&KeySet>,
        outcome: &Authentication<'_>,
    ) -> Option<Self> {
        let (Authentication::Failed { error }, Some(keys)) = (outcome, keys) else { return None };
        let refusal = match error {
            JwtError::VerificationFails => Refusal::Signature,
            JwtError::Expired | JwtError::NotYetValid | JwtError::AudienceNotAllowed => Refusal::Claims {
                lifetime: token.lifetime().ok()?,
                audience_refused: *error == JwtError::AudienceNotAllowed,
            },
            _ => return None,
        };
        Some(Self::Verified { rule: Arc::downgrade(token.rule()), keys: keys.fingerprint(), refusal })
    }

    /// The refusal `error` of reading a token, when it is the token's own: an issuer another
    /// rule may accept is not.
    fn of_reading(error: JwtError) -> Option<Self> {
        (error != JwtError::UnknownIssuer).then_some(Self::Unreadable(error))
    }

    /// What verifying the token under `credential`'s rule with the keys `context` has now would
    /// answer, when this rejection says; `None`: it must be verified.
    fn recalled<'p>(&self, credential: &Credential<'p>, context: &AuthnContext<'_>) -> Option<Authentication<'p>> {
        let error = match self {
            Self::Unreadable(error) => *error,
            Self::Verified { rule, keys, refusal } => {
                if !std::ptr::eq(rule.as_ptr(), Arc::as_ptr(credential.rule()))
                    || credential.key_set(context.keys)?.fingerprint() != *keys
                {
                    return None;
                }
                match refusal {
                    Refusal::Signature => JwtError::VerificationFails,
                    Refusal::Claims { lifetime, audience_refused } => {
                        match lifetime.check(context.now, context.clock_skew_secs) {
                            Err(error) => error,
                            Ok(()) if *audience_refused => JwtError::AudienceNotAllowed,
                            Ok(()) => return None,
                        }
                    }
                }
            }
        };
        Some(Authentication::Failed { error })
    }
}

/// Rejected tokens by SHA-256 of the token (never the token), in shards whose lock is held for
/// one probe or one insertion; a full shard forgets an arbitrary entry to make room.
#[derive(Debug)]
pub struct RejectedTokens {
    shards: Box<[Mutex<HashMap<TokenDigest, Rejection>>]>,
    capacity_per_shard: usize,
    len: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl RejectedTokens {
    /// A cache of at most `capacity` rejections (rounded up to a multiple of its shards); 0
    /// disables it.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        let count = (capacity / MIN_ENTRIES_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = (0..count).map(|_| Mutex::default()).collect();
        Self { shards, capacity_per_shard: capacity.div_ceil(count), len: AtomicUsize::new(0), metrics }
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "there is at least one shard, and the index is taken modulo their count"
    )]
    fn shard(&self, digest: &TokenDigest) -> &Mutex<HashMap<TokenDigest, Rejection>> {
        // Another byte than the verified-token cache's shard index.
        &self.shards[usize::from(digest.0[1]) % self.shards.len()]
    }

    /// The refusal remembered for the credential's token, when it still holds; `None`: the
    /// token must be read and verified.
    pub fn recall<'p>(
        &self,
        key: &TokenKey<'_>,
        credential: &Credential<'p>,
        context: &AuthnContext<'_>,
    ) -> Option<Authentication<'p>> {
        if self.capacity_per_shard == 0 {
            return None;
        }
        let digest = key.digest();
        let recalled = self.shard(&digest).lock().ok()?.get(&digest)?.recalled(credential, context)?;
        self.metrics.record_token_rejection_cached();
        Some(recalled)
    }

    /// Remembers why reading the token failed, when that is the token's own fault, and hands
    /// the refusal on.
    pub fn remember_reading<'p>(&self, key: &TokenKey<'_>, error: JwtError) -> Authentication<'p> {
        if let Some(rejection) = Rejection::of_reading(error) {
            self.insert(key, rejection);
        }
        Authentication::Failed { error }
    }

    /// Remembers the refusal of `token`'s verification with `keys`, when it holds until its
    /// rule or keys change.
    pub fn remember_verification(
        &self,
        key: &TokenKey<'_>,
        token: &UnverifiedToken<'_>,
        keys: Option<&KeySet>,
        outcome: &Authentication<'_>,
    ) {
        if let Some(rejection) = Rejection::of_verification(token, keys, outcome) {
            self.insert(key, rejection);
        }
    }

    fn insert(&self, key: &TokenKey<'_>, rejection: Rejection) {
        if self.capacity_per_shard == 0 {
            return;
        }
        let digest = key.digest();
        let Ok(mut entries) = self.shard(&digest).lock() else { return };
        let before = entries.len();
        if before >= self.capacity_per_shard
            && !entries.contains_key(&digest)
            && let Some(victim) = entries.keys().next().copied()
        {
            entries.remove(&victim);
        }
        entries.insert(digest, rejection);
        // One entry replaced, one made room for, or one more.
        let added = entries.len().saturating_sub(before);
        drop(entries);
        let len = self.len.fetch_add(added, Ordering::Relaxed) + added;
        self.metrics.record_rejected_token_cache_size(len);
    }

    /// Rejections held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no rejection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::authn::{self, KeyLookup, KeySource, NoRemoteKeys};
    use crate::core::test_util::{self, ISSUER, NOW};
    use crate::identity::token_cache::VerifiedTokenCache;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::Algorithm;
    use serde_json::{Value, json};

    /// How `token` is authenticated under `rule` at `now`: through `cache` when given, else by
    /// the core alone (nothing remembered); the caller's subject, or the refusal.
    fn judge(
        cache: Option<&VerifiedTokenCache>,
        rule: &Arc<JwtRule>,
        keys: &dyn KeyLookup,
        now: u64,
        token: &str,
    ) -> Result<String, JwtError> {
        let context = AuthnContext { keys, now, clock_skew_secs: 60, max_token_bytes: 8192 };
        let headers = [test_util::bearer(token)];
        let http = test_util::request_with(&headers);
        let Some(credentials) = authn::find_credentials(&[rule], &http) else { return Ok("anonymous".into()) };
        let authentication = match cache {
            Some(cache) => credentials.authenticate_with(|credential| cache.authenticate(credential, &context)),
            None => credentials.authenticate(&context),
        };
        Ok(authentication.caller()?.map_or_else(|| "anonymous".into(), |identity| identity.subject().to_string()))
    }

    /// The tokens refused again from the rejected-token cache so far.
    fn refused_again(metrics: &Metrics) -> u64 {
        let exposition = metrics.encode();
        let line = exposition.lines().find(|line| line.starts_with("portcullis_token_rejections_cached_total "));
        line.and_then(|line| line.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    }

    fn cache(rejected: usize) -> (VerifiedTokenCache, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (VerifiedTokenCache::new(1000, metrics.clone()).with_rejected_capacity(rejected), metrics)
    }

    fn claims_with(changes: Value) -> Value {
        let mut claims = test_util::claims();
        for (name, value) in changes.as_object().into_iter().flatten() {
            claims[name] = value.clone();
        }
        claims
    }

    /// `token` with its payload replaced by `claims`, keeping its header and signature: a
    /// token whose signature no key verifies, made without signing.
    fn with_payload(token: &str, claims: &Value) -> String {
        let mut parts = token.split('.');
        let (header, _, signature) = (parts.next().unwrap_or(""), parts.next(), parts.next().unwrap_or(""));
        format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn rsa(claims: &Value) -> String {
        test_util::sign("rsa-2048.pem", Algorithm::RS256, "rsa", claims)
    }

    #[test]
    fn every_bad_token_is_refused_as_the_core_refuses_it_the_first_time_and_every_time_after() {
        let rule = test_util::rule(&["jobs-api"]);
        let good = rsa(&test_util::claims());
        let cases: Vec<(&str, String, Option<JwtError>, bool)> = vec![
            ("two parts", "header.payload".into(), Some(JwtError::BadFormat), true),
            ("no base64url", "a$.b.c".into(), Some(JwtError::VerificationFails), true),
            ("over max_token_bytes", format!("{good}{}", "A".repeat(9000)), Some(JwtError::VerificationFails), true),
            (
                "a bad signature",
                with_payload(&good, &claims_with(json!({"sub": "mallory"}))),
                Some(JwtError::VerificationFails),
                true,
            ),
            (
                "signed by another key under a known kid",
                test_util::sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &test_util::claims()),
                Some(JwtError::VerificationFails),
                true,
            ),
            ("expired", rsa(&claims_with(json!({"exp": NOW - 3600}))), Some(JwtError::Expired), true),
            ("not yet valid", rsa(&claims_with(json!({"nbf": NOW + 3600}))), Some(JwtError::NotYetValid), true),
            ("another audience", rsa(&claims_with(json!({"aud": "other"}))), Some(JwtError::AudienceNotAllowed), true),
            // Not remembered: another rule may know the issuer; a refetch may bring the key.
            (
                "another issuer",
                rsa(&claims_with(json!({"iss": "https://other"}))),
                Some(JwtError::UnknownIssuer),
                false,
            ),
            (
                "an unknown kid",
                test_util::sign("rsa-2048.pem", Algorithm::RS256, "gone", &test_util::claims()),
                Some(JwtError::KeyNotFound),
                false,
            ),
            ("a good token", good.clone(), None, false),
        ];
        for (name, token, refusal, remembered) in cases {
            let (cache, metrics) = cache(100);
            let core = judge(None, &rule, &NoRemoteKeys, NOW, &token);
            assert_eq!(core.as_ref().err(), refusal.as_ref(), "{name}: the core's answer");
            for round in 0..3 {
                assert_eq!(judge(Some(&cache), &rule, &NoRemoteKeys, NOW, &token), core, "{name}: round {round}");
            }
            assert_eq!(cache.rejected().len(), usize::from(remembered), "{name}");
            let expected_again = if remembered { 2 } else { 0 };
            assert_eq!(refused_again(&metrics), expected_again, "{name}: verified once, refused again from the cache");
        }
    }

    #[test]
    fn a_remembered_refusal_of_the_claims_is_judged_again_at_each_check() {
        let rule = test_util::rule(&["jobs-api"]);
        let (cache, metrics) = cache(100);
        let wrong_audience = rsa(&claims_with(json!({"aud": "other", "exp": NOW + 300})));
        let not_yet = rsa(&claims_with(json!({"nbf": NOW + 300, "exp": NOW + 3600})));
        for (token, now) in
            [(&wrong_audience, NOW), (&wrong_audience, NOW + 1000), (&not_yet, NOW), (&not_yet, NOW + 1000)]
        {
            let core = judge(None, &rule, &NoRemoteKeys, now, token);
            assert_eq!(judge(Some(&cache), &rule, &NoRemoteKeys, now, token), core, "at {now}");
        }
        assert_eq!(judge(None, &rule, &NoRemoteKeys, NOW + 1000, &wrong_audience), Err(JwtError::Expired));
        assert_eq!(judge(None, &rule, &NoRemoteKeys, NOW + 1000, &not_yet).as_deref(), Ok("alice"));
        assert_eq!(
            refused_again(&metrics),
            1,
            "the wrong audience's expiry came from the cache; the valid token did not"
        );
    }

    #[test]
    fn distinct_bad_tokens_keep_the_cache_at_its_bound() {
        let rule = test_util::rule(&[]);
        let (cache, metrics) = cache(32);
        let good = rsa(&test_util::claims());
        for serial in 0..500 {
            let forged = with_payload(&good, &claims_with(json!({"jti": format!("forged-{serial}")})));
            assert_eq!(judge(Some(&cache), &rule, &NoRemoteKeys, NOW, &forged), Err(JwtError::VerificationFails));
            assert!(cache.rejected().len() <= 32, "{} entries after {serial}", cache.rejected().len());
        }
        assert_eq!(cache.rejected().len(), 32, "full");
        assert!(metrics.encode().contains("portcullis_rejected_token_cache_entries 32"), "{}", metrics.encode());
        assert_eq!(cache.len(), 0, "no verified token was displaced or added");
    }

    #[test]
    fn a_small_cache_is_one_shard_so_that_its_bound_is_reached_and_a_large_one_is_split() {
        let shards = |capacity| cache(capacity).0.rejected().shards.len();
        assert_eq!(
            [shards(1), shards(32), shards(1023), shards(1024), shards(10_000), shards(1_000_000)],
            [1, 1, 1, 2, 16, 16]
        );
    }

    #[test]
    fn a_disabled_cache_remembers_no_rejection() {
        let rule = test_util::rule(&[]);
        let (cache, metrics) = cache(0);
        let forged = with_payload(&rsa(&test_util::claims()), &claims_with(json!({"sub": "mallory"})));
        for _ in 0..3 {
            assert_eq!(judge(Some(&cache), &rule, &NoRemoteKeys, NOW, &forged), Err(JwtError::VerificationFails));
        }
        assert!(cache.rejected().is_empty());
        assert_eq!(refused_again(&metrics), 0);
    }

    /// The fetched keys of one issuer, swapped by the test as a refresh would.
    #[derive(Default)]
    struct FetchedKeys(Mutex<Option<Arc<KeySet>>>);

    impl KeyLookup for FetchedKeys {
        fn key_set(&self, _issuer: &str) -> Option<Arc<KeySet>> {
            self.0.lock().ok()?.clone()
        }
    }

    impl FetchedKeys {
        fn set(&self, keys: &[(&str, Algorithm, &str)]) {
            let keys = KeySet::from_jwks_json(&test_util::jwks(keys)).expect("jwks");
            *self.0.lock().expect("lock") = Some(Arc::new(keys));
        }
    }

    fn remote_rule() -> Arc<JwtRule> {
        let mut remote = (*test_util::rule(&[])).clone();
        remote.keys = KeySource::Remote { filed_under: ISSUER.into(), jwks_uri: None, timeout: None };
        Arc::new(remote.keeping(&test_util::rule(&[]).verifier.kept))
    }

    #[test]
    fn a_rotation_that_adds_the_key_that_signed_a_rejected_token_makes_it_valid() {
        let (cache, metrics) = cache(100);
        let rule = remote_rule();
        let fetched = FetchedKeys::default();
        fetched.set(&[("rsa-2048.pem", Algorithm::RS256, "rsa")]);
        let early = test_util::sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &test_util::claims());
        for _ in 0..3 {
            assert_eq!(judge(Some(&cache), &rule, &fetched, NOW, &early), Err(JwtError::VerificationFails));
        }
        assert_eq!(refused_again(&metrics), 2);
        fetched.set(&[("rsa-2048.pem", Algorithm::RS256, "rsa")]);
        assert_eq!(judge(Some(&cache), &rule, &fetched, NOW, &early), Err(JwtError::VerificationFails));
        assert_eq!(refused_again(&metrics), 3, "the same keys fetched again keep the rejection");
        fetched.set(&[("rsa-2048.pem", Algorithm::RS256, "rsa"), ("rsa-2048-other.pem", Algorithm::RS256, "rsa")]);
        assert_eq!(
            judge(Some(&cache), &rule, &fetched, NOW, &early).as_deref(),
            Ok("alice"),
            "the new key verifies it"
        );
        assert_eq!(refused_again(&metrics), 3);
    }

    #[test]
    fn a_token_rejected_under_one_rule_is_verified_again_under_another() {
        let (cache, _) = cache(100);
        let token = test_util::sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &test_util::claims());
        let this_namespace = test_util::rule(&[]);
        let mut other = (*this_namespace).clone();
        let other_keys = test_util::jwks(&[("rsa-2048-other.pem", Algorithm::RS256, "rsa")]);
        other.keys = KeySource::Inline(Arc::new(KeySet::from_jwks_json(&other_keys).expect("jwks")));
        let other_namespace = Arc::new(other.keeping(&this_namespace.verifier.kept));
        assert_eq!(judge(Some(&cache), &this_namespace, &NoRemoteKeys, NOW, &token), Err(JwtError::VerificationFails));
        assert_eq!(judge(Some(&cache), &other_namespace, &NoRemoteKeys, NOW, &token).as_deref(), Ok("alice"));
    }
}
