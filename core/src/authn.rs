//! Request authentication as Istio's RequestAuthentication defines it: where tokens are found, which rule verifies them, what reaches the service; pure.

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use super::identity::{ClaimPaths, Identity, KeyOrigin, Proof, Verifier};
use super::jwt::{self, JwtError, KeySet, Lifetime};
use super::policy::PolicyId;
use super::request::HttpRequest;
use super::workload::LabelSelector;

/// Where a rule looks for tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header (lower-case name) whose value starts with `prefix`.
    Header { name: Box<str>, prefix: Box<str> },
    /// A query parameter.
    Param(Box<str>),
    /// A cookie.
    Cookie(Box<str>),
}

impl TokenLocation {
    /// `Authorization: Bearer <token>`, then `?access_token=<token>`: used when a rule names none.
    pub fn defaults() -> Box<[TokenLocation]> {
        Box::new([
            TokenLocation::Header { name: "authorization".into(), prefix: "Bearer ".into() },
            TokenLocation::Param("access_token".into()),
        ])
    }

    /// Every token the request carries here, one per value of a repeated header: a second
    /// copy must not hide behind the first.
    fn find_all<'r>(&self, http: &HttpRequest<'r>, mut found: impl FnMut(&'r str)) {
        let keep = |token: &'r str| {
            let token = token.trim();
            if !token.is_empty() {
                found(token);
            }
        };
        match self {
            Self::Header { name, prefix } => {
                http.header_values(name).filter_map(|value| value.strip_prefix(&**prefix)).for_each(keep);
            }
            Self::Param(name) => {
                let query = http.path.split_once('?').map(|(_, query)| query.split('#').next().unwrap_or_default());
                let pairs = query.into_iter().flat_map(|query| query.split('&'));
                pairs.filter_map(|pair| pair.strip_prefix(&**name)?.strip_prefix('=')).for_each(keep);
            }
            Self::Cookie(name) => {
                let pairs = http.header_values("cookie").flat_map(|cookies| cookies.split(';'));
                pairs.filter_map(|pair| pair.trim().strip_prefix(&**name)?.strip_prefix('=')).for_each(keep);
            }
        }
    }
}

/// Where a rule's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Fetched from `jwks_uri`, or found by OIDC discovery from the issuer when absent;
    /// `timeout` bounds each fetch when the rule sets one.
    Remote { jwks_uri: Option<Box<str>>, timeout: Option<Duration> },
    /// `jwks` written in the policy.
    Inline(Arc<KeySet>),
}

/// An issuer whose keys are fetched, as the key fetcher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteIssuer {
    pub issuer: Arc<str>,
    pub jwks_uri: Option<Box<str>>,
    pub timeout: Option<Duration>,
}

/// One header filled from a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: Arc<str>,
    /// The claim's path; `a.b` in the policy reaches nested objects.
    pub claim: Box<[Box<str>]>,
}

/// One compiled `jwtRules` entry.
#[derive(Debug, Clone)]
pub struct JwtRule {
    pub issuer: Arc<str>,
    /// Empty: any audience.
    pub audiences: Box<[Box<str>]>,
    pub keys: KeySource,
    pub locations: Box<[TokenLocation]>,
    pub output_payload_to_header: Option<Arc<str>>,
    pub output_claim_to_headers: Box<[ClaimHeader]>,
    pub forward_original_token: bool,
    /// Claims matched word by word: `scope`, `permission` and the rule's `spaceDelimitedClaims`.
    pub space_delimited_claims: Arc<[Box<str>]>,
    /// What the identities this rule verifies share, the claims their policy set reads
    /// among it; [`JwtRule::keeping`] makes it.
    pub verifier: Arc<Verifier>,
}

impl JwtRule {
    /// The claim paths the rule itself reads: its output headers' claims, and `aud` when it
    /// names audiences.
    pub fn claim_paths(&self) -> impl Iterator<Item = Box<[Box<str>]>> + '_ {
        let audience = (!self.audiences.is_empty()).then(|| Box::from([Box::from("aud")]));
        self.output_claim_to_headers.iter().map(|output| output.claim.clone()).chain(audience)
    }

    /// The rule, keeping the claims `kept` names in the identities it verifies.
    pub fn keeping(&self, kept: &Arc<ClaimPaths>) -> Self {
        let verifier = Verifier {
            issuer: self.issuer.clone(),
            keys: KeyOrigin::of(&self.keys),
            kept: kept.clone(),
            space_delimited: self.space_delimited_claims.clone(),
        };
        Self { verifier: Arc::new(verifier), ..self.clone() }
    }
}

/// One compiled RequestAuthentication.
#[derive(Debug, Clone)]
pub struct AuthnPolicy {
    pub id: Arc<PolicyId>,
    pub selector: LabelSelector,
    pub rules: Box<[Arc<JwtRule>]>,
}

/// The keys fetched for remote issuers, as the check sees them now.
pub trait KeyLookup {
    /// The issuer's last good keys; `None` when they were never fetched.
    fn key_set(&self, issuer: &str) -> Option<Arc<KeySet>>;
}

/// Tokens verified before. A cache reads the token's bytes, its digest, or both.
pub trait TokenCache {
    fn get(&self, token: &TokenKey<'_>) -> Option<Arc<Identity>>;
    fn put(&self, token: &TokenKey<'_>, identity: Arc<Identity>);
}

/// A token as a cache key: its text, and its digest, computed at most once per check and only
/// when a cache asks for it.
pub struct TokenKey<'a> {
    token: &'a str,
    digest: OnceCell<TokenDigest>,
}

impl<'a> TokenKey<'a> {
    pub fn new(token: &'a str) -> Self {
        Self { token, digest: OnceCell::new() }
    }

    pub fn token(&self) -> &'a str {
        self.token
    }

    pub fn digest(&self) -> TokenDigest {
        *self.digest.get_or_init(|| TokenDigest::of(self.token))
    }

    /// Whether no cache asked for the digest (tests only).
    #[cfg(any(test, feature = "test-util"))]
    pub fn digest_is_unset(&self) -> bool {
        self.digest.get().is_none()
    }
}

/// The first 128 bits of a token's SHA-256. A cache hit by digest hands out another token's
/// identity only if a forged token shares a real one's digest: a second preimage, 2^128 work
/// at 128 bits. Half the digest halves the key in every cached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 16]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        let mut out = [0; 16];
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        out.copy_from_slice(&digest.as_ref()[..16]);
        Self(out)
    }
}

impl KeyOrigin {
    fn of(source: &KeySource) -> Self {
        match source {
            KeySource::Inline(keys) => Self::Inline(keys.clone()),
            KeySource::Remote { .. } => Self::Remote,
        }
    }
}

/// Everything authentication needs from outside the policy set: keys, cache, clock and limits.
pub struct AuthnContext<'c> {
    pub keys: &'c dyn KeyLookup,
    pub cache: &'c dyn TokenCache,
    /// Seconds since the epoch.
    pub now: u64,
    pub clock_skew_secs: u64,
    pub max_token_bytes: usize,
}

/// A lookup with no keys and a cache that remembers nothing: inline JWKS still work.
pub struct NoRemoteKeys;

impl KeyLookup for NoRemoteKeys {
    fn key_set(&self, _issuer: &str) -> Option<Arc<KeySet>> {
        None
    }
}

impl TokenCache for NoRemoteKeys {
    fn get(&self, _token: &TokenKey<'_>) -> Option<Arc<Identity>> {
        None
    }
    fn put(&self, _token: &TokenKey<'_>, _identity: Arc<Identity>) {}
}

/// The outcome of authentication.
#[derive(Debug, Clone)]
pub enum Authentication<'r> {
    /// No token: not an error; policies decide.
    Anonymous,
    Verified {
        identity: Arc<Identity>,
        rule: Arc<JwtRule>,
        location: TokenLocation,
        token: &'r str,
    },
    /// The token was refused; `issuer` is set when its keys may be stale (unknown `kid`).
    Failed {
        error: JwtError,
        stale_issuer: Option<Arc<str>>,
    },
}

fn failed(error: JwtError) -> Authentication<'static> {
    Authentication::Failed { error, stale_issuer: None }
}

/// Finds the request's token in the rules' locations and verifies it.
pub fn authenticate<'r>(
    rules: &[&Arc<JwtRule>],
    http: &HttpRequest<'r>,
    context: &AuthnContext<'_>,
) -> Authentication<'r> {
    let mut found: Vec<(&'r str, &Arc<JwtRule>, &TokenLocation)> = Vec::new();
    for rule in rules {
        for location in rule.locations.iter() {
            location.find_all(http, |token| found.push((token, rule, location)));
        }
    }
    let Some(&(token, _, _)) = found.first() else { return Authentication::Anonymous };
    // The same header read by several rules is the same slice: no need to compare its bytes.
    if found[1..].iter().any(|&(other, _, _)| !std::ptr::eq(other, token) && other != token) {
        // Two different tokens: which caller is this? Refuse rather than guess.
        return failed(JwtError::VerificationFails);
    }
    let for_issuer = |issuer: &str| {
        found.iter().find(|(_, rule, _)| &*rule.issuer == issuer).map(|&(_, rule, location)| (rule, location))
    };

    let cache_key = TokenKey::new(token);
    let cached = context.cache.get(&cache_key).and_then(|cached| {
        // Another rule of the same issuer name but other keys (another namespace's inline
        // JWKS) must verify the token itself, and a policy set that reads other claims must
        // read the token again.
        let (rule, location) = for_issuer(cached.issuer())?;
        // The key that verified it must still be the issuer's under that `kid`: a key swapped
        // behind a fixed `kid` (a stolen one replaced) vouches for nothing it signed before.
        let still_vouched = cached.is_vouched_for_by(&rule.verifier)
            && key_set(rule, context).is_some_and(|keys| cached.is_vouched_for_by_keys(&keys));
        still_vouched.then_some((cached, rule, location))
    });
    if let Some((cached, rule, location)) = cached {
        if let Err(error) = cached.check_lifetime(context.now, context.clock_skew_secs) {
            return failed(error);
        }
        if !rule.audiences.is_empty() && !cached.has_audience(&rule.audiences) {
            return failed(JwtError::AudienceNotAllowed);
        }
        return Authentication::Verified { identity: cached, rule: rule.clone(), location: location.clone(), token };
    }

    // Every rule of a policy set keeps the same claims; a token is read for any of them.
    let wanted = |name: &str| found.iter().any(|(_, rule, _)| rule.verifier.kept.reads_claim(name));
    let parsed = match jwt::parse(token, context.max_token_bytes, &wanted) {
        Ok(parsed) => parsed,
        Err(error) => return failed(error),
    };
    let Some((rule, location)) = parsed.issuer().and_then(for_issuer) else { return failed(JwtError::UnknownIssuer) };
    let Some(keys) = key_set(rule, context) else { return failed(JwtError::JwksFetchFailed) };
    let key = match jwt::verify_signature(&parsed, &keys) {
        Ok(key) => key,
        Err(error) => {
            let stale_issuer = (error == JwtError::KeyNotFound && matches!(rule.keys, KeySource::Remote { .. }))
                .then(|| rule.issuer.clone());
            return Authentication::Failed { error, stale_issuer };
        }
    };
    let lifetime = match Lifetime::of(&parsed.claims).and_then(|lifetime| {
        lifetime.check(context.now, context.clock_skew_secs)?;
        Ok(lifetime)
    }) {
        Ok(lifetime) => lifetime,
        Err(error) => return failed(error),
    };
    if !rule.audiences.is_empty() && !jwt::audience_allowed(&parsed.claims, &rule.audiences) {
        return failed(JwtError::AudienceNotAllowed);
    }
    let proof = Proof { lifetime, kid: key.kid.clone(), key: key.fingerprint };
    let identity = Arc::new(Identity::from_verified_claims(&parsed.claims, &rule.verifier, proof));
    context.cache.put(&cache_key, identity.clone());
    Authentication::Verified { identity, rule: rule.clone(), location: location.clone(), token }
}

/// A rule's keys: its inline set, or its issuer's last good fetched keys (`None` before the
/// first good fetch).
fn key_set(rule: &JwtRule, context: &AuthnContext<'_>) -> Option<Arc<KeySet>> {
    match &rule.keys {
        KeySource::Inline(keys) => Some(keys.clone()),
        KeySource::Remote { .. } => context.keys.key_set(&rule.issuer),
    }
}

/// What authentication adds to an allowed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    pub headers_to_set: Vec<(Arc<str>, String)>,
    pub headers_to_remove: Vec<Arc<str>>,
    pub query_parameters_to_remove: Vec<Box<str>>,
}

/// A header value may carry no control character but HTAB (RFC 9110 section 5.5): CR, LF or NUL
/// would split it, and any other one makes a proxy drop it and let the client's copy through.
fn is_safe_header_value(value: &str) -> bool {
    !value.bytes().any(|byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f)
}

/// The headers to set and strip: the verified rule's outputs, the token itself unless
/// forwarded, and every output header of every applicable rule that was not set, so that a
/// client can never smuggle its own copy to the service.
pub fn outputs(rules: &[&Arc<JwtRule>], authentication: &Authentication<'_>) -> Outputs {
    let mut outputs = Outputs::default();
    if let Authentication::Verified { identity, rule, location, token } = authentication {
        if let Some(header) = &rule.output_payload_to_header {
            let payload = token.split('.').nth(1).unwrap_or_default();
            outputs.headers_to_set.push((header.clone(), payload.to_string()));
        }
        for ClaimHeader { header, claim } in rule.output_claim_to_headers.iter() {
            if let Some(value) = identity.header_value(claim).filter(|value| is_safe_header_value(value)) {
                outputs.headers_to_set.push((header.clone(), value.to_string()));
            }
        }
        if !rule.forward_original_token {
            match location {
                TokenLocation::Header { name, .. } => outputs.headers_to_remove.push(Arc::from(&**name)),
                TokenLocation::Param(name) => outputs.query_parameters_to_remove.push(name.clone()),
                // Cookies are left in place, as Envoy does.
                TokenLocation::Cookie(_) => {}
            }
        }
    }
    for rule in rules {
        let claim_headers = rule.output_claim_to_headers.iter().map(|output| &output.header);
        for header in rule.output_payload_to_header.iter().chain(claim_headers) {
            let is_set = outputs.headers_to_set.iter().any(|(name, _)| name.eq_ignore_ascii_case(header));
            let is_listed = outputs.headers_to_remove.iter().any(|name| name.eq_ignore_ascii_case(header));
            if !is_set && !is_listed {
                outputs.headers_to_remove.push(header.clone());
            }
        }
    }
    outputs
}
