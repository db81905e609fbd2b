//! The verified caller behind a request: issuer, subject, the claims the policy set reads, and what verified it; pure.
//!
//! The token cache holds one identity per token (100,000 by default), so an identity keeps
//! only the claims some policy, audience check or output header of the live set reads, packed
//! into one string: a Keycloak token of 1.4 kB becomes a few hundred bytes.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::jwt::{JwtError, KeyFingerprint, KeySet, Lifetime};
use super::revocation::RevocationNames;

/// The claims an identity keeps, by path (`["realm_access", "roles"]`), and whether the
/// whole claim set is kept too, as JSON for the decision log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimPaths {
    paths: Box<[Box<[Box<str>]>]>,
    keep_all_as_json: bool,
}

impl ClaimPaths {
    /// These paths, once each.
    pub fn new(paths: impl IntoIterator<Item = Box<[Box<str>]>>, keep_all_as_json: bool) -> Self {
        let mut paths: Vec<Box<[Box<str>]>> = paths.into_iter().filter(|path| !path.is_empty()).collect();
        paths.sort();
        paths.dedup();
        Self { paths: paths.into(), keep_all_as_json }
    }

    fn index_of<S: AsRef<str>>(&self, path: &[S]) -> Option<usize> {
        self.paths
            .iter()
            .position(|kept| kept.len() == path.len() && kept.iter().zip(path).all(|(a, b)| **a == *b.as_ref()))
    }

    /// Whether an identity keeps something of the top-level claim `name`.
    pub fn reads_claim(&self, name: &str) -> bool {
        self.keep_all_as_json || self.paths.iter().any(|path| path.first().is_some_and(|first| **first == *name))
    }

    /// How many claim paths an identity keeps.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether an identity keeps no claim path (the whole set may still be kept as JSON).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// Which keys verified a token: an inline set (by identity) or the issuer's fetched keys.
#[derive(Debug, Clone, Default)]
pub enum KeyOrigin {
    /// The rule's own `jwks`; two rules' inline sets are the same only when they are one set.
    Inline(Arc<KeySet>),
    /// The keys fetched for the issuer, whichever rule named them.
    #[default]
    Remote,
}

impl PartialEq for KeyOrigin {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Inline(a), Self::Inline(b)) => Arc::ptr_eq(a, b),
            (Self::Remote, Self::Remote) => true,
            _ => false,
        }
    }
}

/// What every identity one JWT rule verifies shares: the issuer, the keys, the claims kept and
/// which of them split into words. One per rule, so that an identity points to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verifier {
    /// The rule's issuer: every identity it verifies has this `iss`; `None` for a rule without
    /// issuer, whose identities each keep their token's own.
    pub issuer: Option<Arc<str>>,
    /// Where the keys that verify the rule's tokens come from.
    pub keys: KeyOrigin,
    /// The claims the live policy set reads, and so the only ones an identity keeps.
    pub kept: Arc<ClaimPaths>,
    /// Top-level claims whose string value is a space-separated list (`scope`, ...).
    pub space_delimited: Arc<[Box<str>]>,
}

/// How the values kept for one claim path offer themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// A string claim: matched by policies, written to output headers.
    Text = 0,
    /// The strings of a list claim: matched by policies only.
    Items = 1,
    /// A number or boolean, as text: written to output headers only, as Envoy does.
    Scalar = 2,
    /// The `sub` claim: the subject itself, not kept twice.
    Subject = 3,
}

const KIND_SHIFT: u32 = 30;

impl ValueKind {
    fn from_bits(bits: u32) -> Self {
        match bits {
            0 => Self::Text,
            1 => Self::Items,
            2 => Self::Scalar,
            _ => Self::Subject,
        }
    }
}

/// What the caller presented to be known: the credential its [`Identity`] was verified from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// A JWT a `RequestAuthentication` rule found in the request and verified.
    Jwt,
    /// A browser session cookie, whose login's ID token was verified at sign-in.
    Session,
    /// An API key of a bot account, found by its digest in the configured key files.
    ApiKey,
    /// An opaque token its authorization server's introspection endpoint answered active.
    Introspection,
}

/// A caller proven by a verified token. Only token verification in the core constructs one, so
/// policies can never be handed an unverified principal.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    verifier: Arc<Verifier>,
    /// The token's `iss` when the verifier has no issuer, the subject, the kept values back to
    /// back, then (when kept) every claim as JSON.
    text: Box<str>,
    /// First, one entry per kept path: the number of values kept up to and including that
    /// path, with the path's [`ValueKind`] in the top two bits. Then one entry per value: where
    /// its text ends (it starts where the one before ends; the first where the subject ends).
    index: Box<[u32]>,
    /// Where the token's own `iss` ends in `text` and the subject starts: 0 when the verifier's
    /// issuer is every identity's.
    issuer_end: u32,
    subject_end: u32,
    /// Where the claims' JSON starts in `text`; its length when they are not kept.
    json_start: u32,
    lifetime: Lifetime,
    /// The `kid` of the key that verified the token.
    kid: Option<Arc<str>>,
    /// The fingerprint of the key that verified the token.
    key: KeyFingerprint,
    source: IdentitySource,
    /// What a revocation can name it by.
    revocation: RevocationNames,
}

/// What one verification found, beyond the claims.
#[derive(Debug, Clone)]
pub struct Proof {
    /// The token's `exp` and `nbf`, judged again each time the identity is recalled.
    pub lifetime: Lifetime,
    /// The `kid` of the key that verified the token.
    pub kid: Option<Arc<str>>,
    /// The fingerprint of the key that verified the token: a key swapped behind the same `kid`
    /// vouches for nothing it signed before.
    pub key: KeyFingerprint,
    /// The credential the token came in.
    pub source: IdentitySource,
}

/// Room for the kept claims' values when an identity's text is built: enough for a few roles
/// and scopes; more grows the buffer.
const SCRATCH_VALUE_BYTES: usize = 256;

fn offset(text: &str) -> u32 {
    // A token is at most `max_token_bytes` long; its claims' text cannot pass 4 GiB.
    u32::try_from(text.len()).unwrap_or(u32::MAX)
}

impl Identity {
    /// Keeps, of the claims of a token whose signature, issuer and lifetime were checked, the
    /// subject and the claims the verifier's policy set reads.
    pub(crate) fn from_verified_claims(claims: &Map<String, Value>, verifier: &Arc<Verifier>, proof: Proof) -> Self {
        let claim_text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
        // Built in scratch buffers roomy enough for most tokens, then copied out at their exact
        // size: an identity lives as long as its token in the cache, and a buffer grown and
        // shrunk in place would leave a sliver of free memory beside each one.
        let issuer = if verifier.issuer.is_none() { claim_text("iss") } else { "" };
        let mut text = String::with_capacity(issuer.len() + claim_text("sub").len() + SCRATCH_VALUE_BYTES);
        text.push_str(issuer);
        let issuer_end = offset(&text);
        text.push_str(claim_text("sub"));
        let subject_end = offset(&text);
        let paths = &verifier.kept.paths;
        let mut index = Vec::with_capacity(paths.len() * 2);
        index.resize(paths.len(), 0);
        let mut values_end = Vec::new();
        for (slot, path) in index.iter_mut().zip(paths.iter()) {
            let mut push = |value: &str| {
                text.push_str(value);
                offset(&text)
            };
            let (kind, ends): (ValueKind, Vec<u32>) = match claim_at(claims, path) {
                Some(Value::String(_)) if **path == [Box::from("sub")] => (ValueKind::Subject, Vec::new()),
                Some(Value::String(value)) => (ValueKind::Text, vec![push(value)]),
                Some(Value::Array(items)) => {
                    (ValueKind::Items, items.iter().filter_map(Value::as_str).map(&mut push).collect())
                }
                Some(Value::Number(number)) => (ValueKind::Scalar, vec![push(&envoy_number_text(number))]),
                Some(Value::Bool(flag)) => (ValueKind::Scalar, vec![push(if *flag { "true" } else { "false" })]),
                Some(Value::Null | Value::Object(_)) | None => (ValueKind::Text, Vec::new()),
            };
            values_end.extend(ends);
            *slot = offset_count(values_end.len()) | (kind as u32) << KIND_SHIFT;
        }
        let json_start = offset(&text);
        if verifier.kept.keep_all_as_json {
            text.push_str(&Value::Object(claims.clone()).to_string());
        }
        index.extend(values_end);
        let revocation = match proof.source {
            IdentitySource::ApiKey => RevocationNames::NONE,
            _ => RevocationNames::of(verifier.issuer.as_deref().unwrap_or(claim_text("iss")), claims),
        };
        Self {
            verifier: verifier.clone(),
            text: Box::from(text.as_str()),
            index: Box::from(index.as_slice()),
            issuer_end,
            subject_end,
            json_start,
            lifetime: proof.lifetime,
            kid: proof.kid,
            key: proof.key,
            source: proof.source,
            revocation,
        }
    }

    /// An identity for `claims` as if a token carrying them had been verified by fetched keys.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests(claims: &Map<String, Value>, kept: &Arc<ClaimPaths>, space_delimited: Arc<[Box<str>]>) -> Self {
        let verifier = Arc::new(Verifier {
            issuer: Some(claims.get("iss").and_then(Value::as_str).unwrap_or_default().into()),
            keys: KeyOrigin::Remote,
            kept: kept.clone(),
            space_delimited,
        });
        let proof = Proof {
            lifetime: Lifetime::of(claims).unwrap_or(Lifetime::UNBOUNDED),
            kid: None,
            key: KeyFingerprint::default(),
            source: IdentitySource::Jwt,
        };
        Self::from_verified_claims(claims, &verifier, proof)
    }

    /// The same identity, as if the key `kid` had verified it (tests only).
    #[cfg(any(test, feature = "test-util"))]
    pub fn signed_by(self, kid: &str) -> Self {
        Self { kid: Some(kid.into()), ..self }
    }

    /// The same identity, as if `key` had verified it (tests only).
    #[cfg(any(test, feature = "test-util"))]
    pub fn signed_with(self, key: &super::jwt::VerificationKey) -> Self {
        Self { kid: key.kid.clone(), key: key.fingerprint, ..self }
    }

    /// The credential this identity was verified from: a request's JWT or a login's session.
    pub fn source(&self) -> IdentitySource {
        self.source
    }

    /// The token's `iss`: the issuer of the rule that verified it, or the token's own when that
    /// rule has none (empty when the token has none).
    pub fn issuer(&self) -> &str {
        match &self.verifier.issuer {
            Some(issuer) => issuer,
            None => self.text_between(0, self.issuer_end),
        }
    }

    /// The token's `sub`; empty when it has none or it is not a string.
    pub fn subject(&self) -> &str {
        self.text_between(self.issuer_end, self.subject_end)
    }

    fn text_between(&self, start: u32, end: u32) -> &str {
        self.text.get(start as usize..end as usize).unwrap_or_default()
    }

    /// The kind of the values kept for `path`, and their texts.
    fn kept_values<S: AsRef<str>>(&self, path: &[S]) -> (ValueKind, impl Iterator<Item = &str> + use<'_, S>) {
        let paths = self.verifier.kept.paths.len();
        let found = self.verifier.kept.index_of(path).map(|at| {
            let entry = self.index.get(at).copied().unwrap_or_default();
            let first = if at == 0 { 0 } else { self.index.get(at - 1).copied().unwrap_or_default() & COUNT_MASK };
            (ValueKind::from_bits(entry >> KIND_SHIFT), first as usize..(entry & COUNT_MASK) as usize)
        });
        let (kind, values) = found.unwrap_or((ValueKind::Text, 0..0));
        let texts = values.map(move |value| {
            let start = if value == 0 {
                self.subject_end
            } else {
                self.index.get(paths + value - 1).copied().unwrap_or_default()
            };
            self.text_between(start, self.index.get(paths + value).copied().unwrap_or_default())
        });
        let subject = (kind == ValueKind::Subject).then(|| self.subject());
        let kind = if kind == ValueKind::Subject { ValueKind::Text } else { kind };
        (kind, subject.into_iter().chain(texts))
    }

    /// The strings a claim offers to a matcher: a string itself, or the strings of a list;
    /// numbers, booleans and objects offer none, as in Istio. A space-delimited claim
    /// (`scope`, `permission`, a rule's `spaceDelimitedClaims`) given as one string offers
    /// each word. A claim the policy set does not read offers nothing.
    pub fn claim_values<'s, S: AsRef<str>>(&'s self, path: &[S]) -> impl Iterator<Item = &'s str> + use<'s, S> {
        let is_space_delimited =
            matches!(path, [name] if self.verifier.space_delimited.iter().any(|claim| **claim == *name.as_ref()));
        let (kind, values) = self.kept_values(path);
        let split = kind == ValueKind::Text && is_space_delimited;
        values.filter(move |_| kind != ValueKind::Scalar).flat_map(move |value| {
            let words = split.then(|| value.split(' ').filter(|word| !word.is_empty()));
            let whole = (!split).then_some(value);
            words.into_iter().flatten().chain(whole)
        })
    }

    /// A claim as Envoy writes it into a header: a string, number or boolean; `None` for
    /// lists, objects and claims the set does not keep.
    pub fn header_value<S: AsRef<str>>(&self, path: &[S]) -> Option<&str> {
        let (kind, mut values) = self.kept_values(path);
        if kind == ValueKind::Items { None } else { values.next() }
    }

    /// Whether the token's `aud` (a string or a list of strings) names one of `allowed`.
    pub fn has_audience(&self, allowed: &[Box<str>]) -> bool {
        let (kind, mut values) = self.kept_values(&["aud"]);
        kind != ValueKind::Scalar && values.any(|aud| allowed.iter().any(|want| **want == *aud))
    }

    /// Every claim as JSON, when the policy set keeps them for the decision log.
    pub fn claims_json(&self) -> Option<&str> {
        self.verifier.kept.keep_all_as_json.then(|| self.text.get(self.json_start as usize..).unwrap_or_default())
    }

    /// Whether the token is still within `exp`/`nbf` at `now`, with `skew_secs` of tolerance.
    pub fn check_lifetime(&self, now: u64, skew_secs: u64) -> Result<(), JwtError> {
        self.lifetime.check(now, skew_secs)
    }

    /// The token's `exp`, seconds since the epoch.
    pub fn expires_at(&self) -> Option<f64> {
        self.lifetime.expires_at()
    }

    /// What a revocation can name this identity by: its token's `jti`, `sid`, subject and `iat`.
    pub fn revocation_names(&self) -> &RevocationNames {
        &self.revocation
    }

    /// The `kid` of the key that verified the token.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether `keys` still hold the key that verified the token, under the same `kid`.
    pub fn is_vouched_for_by_keys(&self, keys: &KeySet) -> bool {
        keys.holds(self.kid(), &self.key)
    }

    /// Whether this identity may stand for a token that `verifier` would verify: the same
    /// keys vouch for it, and it keeps the claims that verifier's policy set reads.
    pub fn is_vouched_for_by(&self, verifier: &Arc<Verifier>) -> bool {
        Arc::ptr_eq(&self.verifier, verifier)
            || (self.verifier.keys == verifier.keys && self.verifier.kept == verifier.kept)
    }
}

/// The low 30 bits of a path's index entry: how many values were kept up to that path.
const COUNT_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// A number as Envoy writes a claim into a header (`convertClaimDoubleToString`): read as a
/// double, an integer from 0 to under 2^64 as one (`7`, `7.0` alike), any other as C's `%f`
/// (`2.500000`, `-3.000000`).
fn envoy_number_text(number: &serde_json::Number) -> String {
    let value = number.as_f64().unwrap_or_default();
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a whole number in u64's range")]
    if (0.0..u64::MAX as f64).contains(&value) && value.fract() == 0.0 {
        (value as u64).to_string()
    } else {
        format!("{value:.6}")
    }
}

fn offset_count(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(COUNT_MASK).min(COUNT_MASK)
}

/// A claim by its path of names: `["realm_access", "roles"]` reaches nested objects.
pub fn claim_at<'c, S: AsRef<str>>(claims: &'c Map<String, Value>, path: &[S]) -> Option<&'c Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(claims.get(first.as_ref())?, |value, name| value.get(name.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> Box<[Box<str>]> {
        text.split('.').map(Into::into).collect()
    }

    fn identity(claims: Value, kept: &[&str]) -> Identity {
        let Value::Object(map) = claims else { unreachable!("claims are an object") };
        let kept = Arc::new(ClaimPaths::new(kept.iter().map(|text| path(text)), false));
        Identity::for_tests(&map, &kept, Arc::from(vec![Box::from("scope")]))
    }

    #[test]
    fn claims_are_reached_by_nested_paths() {
        let id = identity(
            json!({"iss": "https://kc/realms/jobs", "sub": "u1", "realm_access": {"roles": ["admin", "user"]}}),
            &["realm_access.roles", "realm_access.missing", "sub.deeper"],
        );
        assert_eq!(id.issuer(), "https://kc/realms/jobs");
        assert_eq!(id.subject(), "u1");
        assert_eq!(id.claim_values(&["realm_access", "roles"]).collect::<Vec<_>>(), ["admin", "user"]);
        assert_eq!(id.claim_values(&["realm_access", "missing"]).count(), 0);
        assert_eq!(id.claim_values(&["sub", "deeper"]).count(), 0);
    }

    #[test]
    fn space_delimited_claims_offer_each_word() {
        let id = identity(json!({"scope": "openid  profile email", "other": "a b"}), &["scope", "other", "missing"]);
        assert_eq!(id.claim_values(&["scope"]).collect::<Vec<_>>(), ["openid", "profile", "email"]);
        assert_eq!(id.claim_values(&["other"]).collect::<Vec<_>>(), ["a b"]);
        assert_eq!(id.claim_values(&["missing"]).count(), 0);
    }

    #[test]
    fn only_strings_offer_values_to_matchers_and_scalars_reach_headers() {
        // (claim value, what matchers see, what an output header gets)
        let table = [
            (json!("a"), vec!["a"], Some("a")),
            (json!(["a", 1, true, "b", ["c"]]), vec!["a", "b"], None),
            (json!(7), vec![], Some("7")),
            (json!(2.5), vec![], Some("2.500000")),
            (json!(true), vec![], Some("true")),
            (json!({"a": "b"}), vec![], None),
            (json!(null), vec![], None),
            (json!(""), vec![""], Some("")),
        ];
        for (value, matched, header) in table {
            let id = identity(json!({ "c": value.clone() }), &["c"]);
            assert_eq!(id.claim_values(&["c"]).collect::<Vec<_>>(), matched, "{value}");
            assert_eq!(id.header_value(&["c"]), header, "{value}");
        }
    }

    #[test]
    fn numbers_reach_headers_as_envoy_prints_them() {
        let table = [
            ("7", "7"),
            ("7.0", "7"),
            ("0", "0"),
            ("-0.0", "0"),
            ("18446744073709549568", "18446744073709549568"),
            ("18446744073709551616", "18446744073709551616.000000"),
            ("2.5", "2.500000"),
            ("-3", "-3.000000"),
            ("0.0078125", "0.007812"),
            ("1e-7", "0.000000"),
            ("1e20", "100000000000000000000.000000"),
        ];
        for (json, header) in table {
            let value: Value = serde_json::from_str(json).expect("a JSON number");
            let id = identity(json!({ "n": value }), &["n"]);
            assert_eq!(id.header_value(&["n"]), Some(header), "{json}");
        }
    }

    #[test]
    fn claims_the_set_does_not_read_are_not_kept() {
        let id = identity(json!({"sub": "u1", "email": "a@b", "groups": ["g"]}), &["groups"]);
        assert_eq!(id.claim_values(&["email"]).count(), 0);
        assert_eq!(id.header_value(&["email"]), None);
        assert_eq!(id.claim_values(&["groups"]).collect::<Vec<_>>(), ["g"]);
        assert_eq!(id.claims_json(), None);
        assert_eq!(&*id.text, "u1g", "the subject and the kept values only");
    }

    #[test]
    fn the_sub_claim_is_the_subject_kept_once() {
        let id = identity(json!({"sub": "u1", "groups": ["g", "h"], "level": 3}), &["sub", "groups", "level"]);
        assert_eq!(&*id.text, "u1gh3");
        assert_eq!(id.header_value(&["sub"]), Some("u1"));
        assert_eq!(id.claim_values(&["sub"]).collect::<Vec<_>>(), ["u1"]);
        assert_eq!(id.claim_values(&["groups"]).collect::<Vec<_>>(), ["g", "h"]);
        assert_eq!(id.header_value(&["level"]), Some("3"));
        let numeric = identity(json!({"sub": 5}), &["sub"]);
        assert_eq!((numeric.subject(), numeric.header_value(&["sub"])), ("", Some("5")));
        assert_eq!(numeric.claim_values(&["sub"]).count(), 0);
    }

    #[test]
    fn every_claim_is_kept_as_json_when_the_decision_log_asks() {
        let Value::Object(claims) = json!({"sub": "u1", "email": "a@b", "roles": ["x"]}) else { unreachable!() };
        let kept = Arc::new(ClaimPaths::new([path("roles")], true));
        let id = Identity::for_tests(&claims, &kept, Arc::from(Vec::new()));
        let logged: Value = serde_json::from_str(id.claims_json().expect("kept")).expect("JSON");
        assert_eq!(logged, Value::Object(claims));
        assert_eq!(id.claim_values(&["roles"]).collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn audiences_compare_whole_strings_of_a_string_or_list() {
        let allowed: &[Box<str>] = &["jobs".into()];
        let table = [
            (json!("jobs"), true),
            (json!(["account", "jobs"]), true),
            (json!("jobs other"), false),
            (json!(["jobsx"]), false),
            (json!(7), false),
            (json!([["jobs"]]), false),
        ];
        for (aud, expected) in table {
            let id = identity(json!({ "aud": aud.clone() }), &["aud"]);
            assert_eq!(id.has_audience(allowed), expected, "{aud}");
        }
    }

    #[test]
    fn identities_stand_for_verifiers_with_the_same_keys_and_kept_claims() {
        let id = identity(json!({"sub": "u1"}), &["a", "b"]);
        let verifier = |kept: ClaimPaths, keys: KeyOrigin| {
            Arc::new(Verifier { kept: Arc::new(kept), keys, ..Verifier::default() })
        };
        assert!(id.is_vouched_for_by(&verifier(
            ClaimPaths::new([path("b"), path("a"), path("a")], false),
            KeyOrigin::Remote
        )));
        assert!(!id.is_vouched_for_by(&verifier(ClaimPaths::new([path("a")], false), KeyOrigin::Remote)));
        assert!(!id.is_vouched_for_by(&verifier(ClaimPaths::new([path("a"), path("b")], true), KeyOrigin::Remote)));
        let inline = KeyOrigin::Inline(Arc::new(KeySet::default()));
        assert!(!id.is_vouched_for_by(&verifier(ClaimPaths::new([path("a"), path("b")], false), inline)));
    }
}
