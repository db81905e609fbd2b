//! API keys of bot accounts: where a request presents one, the table of known keys by SHA-256, and the identity a known key stands for (built here only; `now` is an input); pure.
//!
//! A key is looked up by the SHA-256 of what the request presents, never compared with stored
//! keys, so the time to refuse a key does not depend on how much of a real key it shares.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use serde_json::{Map, Value};

use super::authn::Authentication;
use super::id_token::SPACE_DELIMITED;
use super::identity::{ClaimPaths, Identity, IdentitySource, KeyOrigin, Proof, Verifier};
use super::jwt::{JwtError, KeyFingerprint, Lifetime};
use super::request::HttpRequest;

/// Claims a key's entry may not set: the principal, the issuer and the expiry say them.
pub const RESERVED_CLAIMS: [&str; 4] = ["iss", "sub", "exp", "nbf"];

/// A header in which a request may present an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyLocation {
    /// The header's name, lower case.
    pub header: Arc<str>,
    /// What precedes the key in the value (`APIKey `), compared without regard to ASCII case
    /// as an HTTP authentication scheme is; empty for a header of its own (`x-api-key`).
    pub prefix: Box<str>,
}

/// The API key a request presents, found but not looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedKey<'r> {
    /// The key as sent, surrounding blanks removed; `None` when the request presents it empty
    /// or more than once (refused: a request presents one key, once).
    key: Option<&'r str>,
    /// The headers it came in: removed before the request reaches the service.
    headers: Vec<Arc<str>>,
}

impl ApiKeyLocation {
    /// Every key the request presents here, one per header value that starts with the prefix,
    /// surrounding blanks removed (empty ones too).
    pub fn keys_in<'r, 's>(&'s self, http: &'s HttpRequest<'r>) -> impl Iterator<Item = &'r str> + 's {
        let values = http.header_values(&self.header);
        values
            .filter_map(|value| strip_prefix_ignoring_ascii_case(value, &self.prefix))
            .map(|key| key.trim_matches([' ', '\t']))
    }
}

/// The API key the request presents in `locations`; `None` when it presents none. A header
/// value counts when it starts with its location's prefix.
pub fn find_api_key<'r>(locations: &[ApiKeyLocation], http: &HttpRequest<'r>) -> Option<PresentedKey<'r>> {
    let mut keys = Vec::new();
    let mut headers = Vec::new();
    for location in locations {
        let before = keys.len();
        keys.extend(location.keys_in(http));
        if keys.len() > before && !headers.contains(&location.header) {
            headers.push(location.header.clone());
        }
    }
    let key = match keys.as_slice() {
        [] => return None,
        [key] if !key.is_empty() => Some(*key),
        _ => None,
    };
    Some(PresentedKey { key, headers })
}

fn strip_prefix_ignoring_ascii_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| value.get(prefix.len()..)).flatten()
}

impl PresentedKey<'_> {
    /// Adds the headers the key came in to `remove`, each once.
    pub fn strip_into(&self, remove: &mut Vec<Arc<str>>) {
        for header in &self.headers {
            if !remove.iter().any(|name| name.eq_ignore_ascii_case(header)) {
                remove.push(header.clone());
            }
        }
    }
}

/// The SHA-256 of an API key: what key files hold, and what a table looks keys up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &str) -> Self {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
        Self(bytes)
    }

    /// A digest written as 64 hexadecimal digits, either case.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let text = std::str::from_utf8(pair).ok()?;
            if !text.bytes().all(|digit| digit.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

/// What one key stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyEntry {
    /// The bot account: the caller's principal is `<issuer>/<principal>`.
    pub principal: Box<str>,
    /// The claims policies read (`owner`, `scope`, `roles`, ...); none of [`RESERVED_CLAIMS`].
    pub claims: Map<String, Value>,
    /// Seconds since the epoch from which the key is refused; `None`: it does not expire.
    pub expires_at: Option<u64>,
}

/// A known key: its claims as an identity reads them (`iss`, `sub` and `exp` included).
#[derive(Debug)]
struct Known {
    claims: Map<String, Value>,
    lifetime: Lifetime,
}

/// The API keys known, by digest, whose principals live under one issuer.
#[derive(Debug, Default)]
pub struct ApiKeyTable {
    issuer: Arc<str>,
    keys: HashMap<KeyDigest, Known>,
    space_delimited: Arc<[Box<str>]>,
}

impl ApiKeyTable {
    /// No key yet; principals will be `<issuer>/<principal>`.
    pub fn new(issuer: &str) -> Self {
        let space_delimited = SPACE_DELIMITED.iter().map(|name| Box::from(*name)).collect();
        Self { issuer: issuer.into(), keys: HashMap::new(), space_delimited }
    }

    /// Adds the key whose digest is `digest`; `false` (and the table unchanged) when it holds
    /// that digest already.
    pub fn insert(&mut self, digest: KeyDigest, entry: ApiKeyEntry) -> bool {
        if self.keys.contains_key(&digest) {
            return false;
        }
        let mut claims = entry.claims;
        claims.retain(|name, _| !RESERVED_CLAIMS.contains(&name.as_str()));
        claims.insert("iss".into(), Value::String(self.issuer.to_string()));
        claims.insert("sub".into(), Value::String(entry.principal.into()));
        if let Some(expires_at) = entry.expires_at {
            claims.insert("exp".into(), Value::from(expires_at));
        }
        let lifetime = Lifetime::of(&claims).unwrap_or(Lifetime::UNBOUNDED);
        self.keys.insert(digest, Known { claims, lifetime });
        true
    }

    /// The issuer of every key's principal.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a presented key stands for at `now` (seconds since the epoch), keeping the
    /// claims `kept` names; refused when the key is empty, presented twice, unknown or expired.
    pub fn authenticate(
        &self,
        presented: &PresentedKey<'_>,
        kept: &Arc<ClaimPaths>,
        now: u64,
    ) -> Authentication<'static> {
        let found = presented.key.and_then(|key| self.keys.get(&KeyDigest::of(key)));
        let Some(known) = found else { return Authentication::Failed { error: JwtError::ApiKeyUnknown } };
        if known.lifetime.check(now, 0).is_err() {
            return Authentication::Failed { error: JwtError::ApiKeyExpired };
        }
        let verifier = Arc::new(Verifier {
            issuer: Some(self.issuer.clone()),
            keys: KeyOrigin::Remote,
            kept: kept.clone(),
            space_delimited: self.space_delimited.clone(),
        });
        let proof = Proof {
            lifetime: known.lifetime,
            kid: None,
            key: KeyFingerprint::default(),
            source: IdentitySource::ApiKey,
        };
        Authentication::ApiKey { identity: Arc::new(Identity::from_verified_claims(&known.claims, &verifier, proof)) }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// A request's headers, as a table row gives them.
    type Headers = &'static [(&'static str, &'static str)];

    fn locations() -> Vec<ApiKeyLocation> {
        vec![
            ApiKeyLocation { header: "authorization".into(), prefix: "APIKey ".into() },
            ApiKeyLocation { header: "x-api-key".into(), prefix: "".into() },
        ]
    }

    fn found<'r>(headers: &'r [(&'r str, &'r str)]) -> Option<PresentedKey<'r>> {
        let http = HttpRequest { headers: headers.to_vec(), ..HttpRequest::default() };
        find_api_key(&locations(), &http)
    }

    fn entry(principal: &str, claims: Value, expires_at: Option<u64>) -> ApiKeyEntry {
        let Value::Object(claims) = claims else { unreachable!("claims are an object") };
        ApiKeyEntry { principal: principal.into(), claims, expires_at }
    }

    fn table() -> ApiKeyTable {
        let mut table = ApiKeyTable::new("apikeys");
        let claims = json!({"owner": "platform", "scope": ["svc-a:read", "svc-b:write"], "roles": ["deployer"]});
        assert!(table.insert(KeyDigest::of("key-ci-1"), entry("ci-bot", claims, None)));
        let claims = json!({"owner": "platform", "scope": "svc-a:read svc-b:write", "roles": "deployer ci"});
        assert!(table.insert(KeyDigest::of("key-ci-2"), entry("ci-bot", claims, Some(NOW + 60))));
        assert!(table.insert(KeyDigest::of("key-old"), entry("old-bot", json!({}), Some(NOW))));
        table
    }

    fn kept(names: &[&str]) -> Arc<ClaimPaths> {
        Arc::new(ClaimPaths::new(names.iter().map(|name| Box::from([Box::from(*name)])), false))
    }

    fn outcome(table: &ApiKeyTable, headers: &[(&str, &str)]) -> Result<String, JwtError> {
        let presented = found(headers).ok_or(JwtError::BadFormat)?;
        match table.authenticate(&presented, &kept(&[]), NOW) {
            Authentication::ApiKey { identity } => Ok(format!("{}/{}", identity.issuer(), identity.subject())),
            Authentication::Failed { error } => Err(error),
            other => panic!("not an API key's outcome: {other:?}"),
        }
    }

    #[test]
    fn keys_are_found_in_their_headers_and_prefixes() {
        let rows: &[(&str, Headers, Option<Option<&str>>)] = &[
            ("the authorization scheme", &[("authorization", "APIKey k1")], Some(Some("k1"))),
            ("the scheme in another case", &[("authorization", "apikey k1")], Some(Some("k1"))),
            ("blanks around the key", &[("x-api-key", " \tk1 ")], Some(Some("k1"))),
            ("a header of its own", &[("x-api-key", "k1")], Some(Some("k1"))),
            ("a bearer token is no key", &[("authorization", "Bearer t")], None),
            ("a scheme without its space", &[("authorization", "APIKeyk1")], None),
            ("no header", &[("x-other", "k1")], None),
            ("an empty key", &[("x-api-key", "")], Some(None)),
            ("a scheme with no key", &[("authorization", "APIKey ")], Some(None)),
            ("a header repeated", &[("x-api-key", "k1"), ("x-api-key", "k1")], Some(None)),
            ("two headers", &[("authorization", "APIKey k1"), ("x-api-key", "k2")], Some(None)),
        ];
        for (case, headers, expected) in rows {
            let key = found(headers).map(|presented| presented.key);
            assert_eq!(key, *expected, "{case}");
        }
    }

    #[test]
    fn every_header_a_key_came_in_is_stripped_once() {
        let presented = found(&[("authorization", "APIKey k1"), ("x-api-key", "k2")]).unwrap();
        let mut remove: Vec<Arc<str>> = vec!["X-Api-Key".into()];
        presented.strip_into(&mut remove);
        assert_eq!(remove, [Arc::from("X-Api-Key"), Arc::from("authorization")]);
    }

    #[test]
    fn a_key_is_known_by_its_digest_until_it_expires() {
        let table = table();
        let rows: &[(&str, Headers, Result<&str, JwtError>)] = &[
            ("a key", &[("x-api-key", "key-ci-1")], Ok("apikeys/ci-bot")),
            ("the principal's second key", &[("authorization", "APIKey key-ci-2")], Ok("apikeys/ci-bot")),
            ("a key at its expiry", &[("x-api-key", "key-old")], Err(JwtError::ApiKeyExpired)),
            ("an unknown key", &[("x-api-key", "key-ci-3")], Err(JwtError::ApiKeyUnknown)),
            ("the start of a real key", &[("x-api-key", "key-ci-")], Err(JwtError::ApiKeyUnknown)),
            ("a real key and more", &[("x-api-key", "key-ci-1x")], Err(JwtError::ApiKeyUnknown)),
            ("a real key in another case", &[("x-api-key", "KEY-CI-1")], Err(JwtError::ApiKeyUnknown)),
            ("an empty key", &[("x-api-key", "")], Err(JwtError::ApiKeyUnknown)),
            ("a key twice", &[("x-api-key", "key-ci-1"), ("x-api-key", "key-ci-1")], Err(JwtError::ApiKeyUnknown)),
        ];
        for (case, headers, expected) in rows {
            assert_eq!(outcome(&table, headers).as_deref(), expected.as_deref(), "{case}");
        }
    }

    #[test]
    fn a_keys_identity_offers_its_claims_to_policies_as_a_tokens_would() {
        let table = table();
        let presented = found(&[("x-api-key", "key-ci-2")]).unwrap();
        let Authentication::ApiKey { identity } =
            table.authenticate(&presented, &kept(&["scope", "roles", "owner"]), NOW)
        else {
            panic!("the key is known")
        };
        assert_eq!(identity.source(), IdentitySource::ApiKey);
        let scope: Vec<&str> = identity.claim_values(&["scope"]).collect();
        assert_eq!(scope, ["svc-a:read", "svc-b:write"], "a scope string split on spaces, as a token's");
        assert_eq!(identity.claim_values(&["roles"]).collect::<Vec<_>>(), ["deployer ci"], "other claims whole");
        assert_eq!(identity.header_value(&["owner"]), Some("platform"));
        assert_eq!(identity.expires_at(), Some((NOW + 60) as f64));
    }

    #[test]
    fn an_entry_cannot_set_the_claims_its_principal_and_expiry_say() {
        let mut table = ApiKeyTable::new("apikeys");
        let forged = json!({"iss": "https://idp", "sub": "admin", "exp": NOW + 1_000_000});
        assert!(table.insert(KeyDigest::of("k"), entry("bot", forged, Some(NOW + 1))));
        let presented = found(&[("x-api-key", "k")]).unwrap();
        let Authentication::ApiKey { identity } = table.authenticate(&presented, &kept(&[]), NOW) else {
            panic!("the key is known")
        };
        assert_eq!((identity.issuer(), identity.subject()), ("apikeys", "bot"));
        assert_eq!(identity.expires_at(), Some((NOW + 1) as f64));
    }

    #[test]
    fn a_digest_is_read_from_64_hex_digits_of_either_case_only() {
        let hex = "2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B";
        assert_eq!(KeyDigest::from_hex(hex), Some(KeyDigest::of("secret")));
        assert_eq!(KeyDigest::from_hex(&hex.to_ascii_lowercase()), Some(KeyDigest::of("secret")));
        for bad in ["", "2bb8", &hex[1..], &format!("{hex}0"), &hex.replace('B', "g"), &format!("+{}", &hex[1..])] {
            assert_eq!(KeyDigest::from_hex(bad), None, "{bad}");
        }
        let mut table = ApiKeyTable::new("apikeys");
        assert!(table.insert(KeyDigest::of("k"), entry("a", json!({}), None)));
        assert!(!table.insert(KeyDigest::of("k"), entry("b", json!({}), None)), "one digest, one entry");
        assert_eq!(table.len(), 1);
    }
}
