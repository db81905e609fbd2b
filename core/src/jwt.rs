//! JSON Web Tokens: key sets from JWKS, and verification of one token against them at a given time; pure.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// RSA keys shorter than this are refused.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtError {
    /// Not three non-empty parts separated by dots.
    BadFormat,
    /// Anything else wrong with the token: too long, undecodable, a refused algorithm or header,
    /// claims of the wrong type, or a signature no fitting key verifies.
    VerificationFails,
    /// `exp` is past, clock skew allowed.
    Expired,
    /// `nbf` is still ahead, clock skew allowed.
    NotYetValid,
    /// No rule that applies to the workload names the token's `iss`.
    UnknownIssuer,
    /// The issuer's keys hold none that fits the token's `kid` and `alg`.
    KeyNotFound,
    /// The issuer's keys are not at hand: its JWKS has not been fetched.
    JwksFetchFailed,
    /// The token's `aud` names none of the audiences the rule accepts.
    AudienceNotAllowed,
    /// The API key presented is none of the configured keys, is empty, or came more than once.
    ApiKeyUnknown,
    /// The API key presented is past its expiry.
    ApiKeyExpired,
    /// The request presents an API key and a bearer token: neither speaks for the caller.
    SeveralCredentials,
    /// The introspection endpoint answered that the opaque token is not active (or it expired).
    TokenInactive,
    /// The opaque token could not be introspected: the endpoint down, slow, busy, answering an
    /// error or something that is no introspection answer. Never taken for an answer.
    IntrospectionFailed,
    /// The token, its login session or everything its subject held before a time was revoked
    /// ([`crate::revocation`]).
    Revoked,
}

impl JwtError {
    /// Envoy's wording, sent as the response body.
    pub fn message(self) -> &'static str {
        match self {
            Self::BadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            Self::VerificationFails => "Jwt verification fails",
            Self::Expired => "Jwt is expired",
            Self::NotYetValid => "Jwt not yet valid",
            Self::UnknownIssuer => "Jwt issuer is not configured",
            Self::KeyNotFound => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::JwksFetchFailed => "Jwks remote fetch is failed",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::ApiKeyUnknown => "API key is not valid",
            Self::ApiKeyExpired => "API key is expired",
            Self::SeveralCredentials => "Request carries more than one credential",
            Self::TokenInactive => "Token is not active",
            Self::IntrospectionFailed => "Token introspection failed",
            Self::Revoked => "Token has been revoked",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// The signing algorithms accepted; `none` and HMAC never are.
const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

fn key_kind_for(algorithm: Algorithm) -> Option<KeyKind> {
    match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(KeyKind::Rsa),
        Algorithm::ES256 => Some(KeyKind::P256),
        Algorithm::ES384 => Some(KeyKind::P384),
        Algorithm::EdDSA => Some(KeyKind::Ed25519),
        _ => None,
    }
}

/// aws-lc's verification algorithm for a JWS `alg`, as jsonwebtoken's aws-lc backend picks it.
#[derive(Clone, Copy)]
enum LcAlgorithm {
    Rsa(&'static RsaParameters),
    Other(&'static dyn VerificationAlgorithm),
}

fn lc_algorithm(algorithm: Algorithm) -> Option<LcAlgorithm> {
    use LcAlgorithm::{Other, Rsa};
    Some(match algorithm {
        Algorithm::RS256 => Rsa(&lc::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Rsa(&lc::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Rsa(&lc::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Rsa(&lc::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Rsa(&lc::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Rsa(&lc::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Other(&lc::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Other(&lc::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Other(&lc::ED25519),
        _ => return None,
    })
}

/// SHA-256 of a key's canonical public material (its type, its public numbers, the
/// algorithms it accepts): two keys with the same fingerprint verify the same signatures. A
/// cached token counts only while its issuer still holds the key that verified it under the
/// same `kid`, so an IdP that swaps the key behind a fixed `kid` cuts off every token the old
/// key signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyFingerprint(pub [u8; 32]);

impl KeyFingerprint {
    fn of(kind: KeyKind, material: &KeyMaterial, accepted: &[(Algorithm, ParsedPublicKey)]) -> Self {
        let mut canonical = vec![kind as u8];
        let mut push_field = |bytes: &[u8]| {
            canonical.extend((bytes.len() as u64).to_be_bytes());
            canonical.extend(bytes);
        };
        match material {
            KeyMaterial::Rsa { n, e } => {
                for number in [n, e] {
                    let mut digits: &[u8] = number;
                    while let [0, rest @ ..] = digits {
                        digits = rest;
                    }
                    push_field(digits);
                }
            }
            KeyMaterial::Bytes(bytes) => push_field(bytes),
        }
        for (algorithm, _) in accepted {
            push_field(format!("{algorithm:?}").as_bytes());
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical).as_ref());
        Self(fingerprint)
    }
}

/// One usable public key from a JWKS, parsed once for each algorithm it may verify: a
/// signature check then costs the signature arithmetic, not a key parse.
#[derive(Clone)]
pub struct VerificationKey {
    /// The JWK's `kid`; a key without one fits only tokens whose header names none.
    pub kid: Option<Arc<str>>,
    /// Computed once, when the key set is read.
    pub fingerprint: KeyFingerprint,
    kind: KeyKind,
    /// The key for each algorithm it accepts: the one the JWK pins, or every one of its kind.
    parsed: Box<[(Algorithm, ParsedPublicKey)]>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey").field("kid", &self.kid).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// The parsed key for `algorithm`, when the key fits the token's `kid` and `alg`.
    fn for_token(&self, algorithm: Algorithm, kid: Option<&str>) -> Option<&ParsedPublicKey> {
        let kid_fits = match (kid, &self.kid) {
            (Some(wanted), Some(have)) => wanted == &**have,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let parsed = self.parsed.iter().find(|(accepted, _)| *accepted == algorithm).map(|(_, key)| key);
        parsed.filter(|_| kid_fits)
    }
}

/// The usable keys of one JWKS, and how many were left out and why.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// The keys a token may be verified with, in the JWKS's order.
    pub keys: Arc<[VerificationKey]>,
    /// Keys skipped: encryption keys, symmetric keys, short RSA keys, unknown types.
    pub skipped: Vec<String>,
    fingerprint: KeySetFingerprint,
}

/// SHA-256 of a key set's usable keys in order, each by its `kid` and [`KeyFingerprint`]: two
/// sets with the same fingerprint verify the same tokens with the same keys, so a token one of
/// them refused is refused by the other. A set fetched again unchanged keeps its fingerprint;
/// a rotation changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeySetFingerprint(pub [u8; 32]);

impl KeySetFingerprint {
    fn of(keys: &[VerificationKey]) -> Self {
        let mut canonical = Vec::with_capacity(keys.len() * 80);
        for key in keys {
            // A key without `kid` differs from one whose `kid` is empty.
            let kid = key.kid.as_deref().map(str::as_bytes);
            canonical.push(u8::from(kid.is_some()));
            canonical.extend((kid.unwrap_or_default().len() as u64).to_be_bytes());
            canonical.extend(kid.unwrap_or_default());
            canonical.extend(key.fingerprint.0);
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical).as_ref());
        Self(fingerprint)
    }
}

impl KeySet {
    /// Reads a JWKS document. Unusable keys are skipped, not fatal; a document that is not a
    /// JWKS is an error.
    pub fn from_jwks_json(text: &str) -> Result<Self, String> {
        let document: Value = serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
        let Some(entries) = document.get("keys").and_then(Value::as_array) else {
            return Err("not a JWKS: no `keys` list".into());
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            match usable_key(entry) {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(format!("keys[{index}]: {reason}")),
            }
        }
        let fingerprint = KeySetFingerprint::of(&keys);
        Ok(Self { keys: keys.into(), skipped, fingerprint })
    }

    /// What the set's usable keys are, in one value; see [`KeySetFingerprint`].
    pub fn fingerprint(&self) -> KeySetFingerprint {
        self.fingerprint
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no usable key: every token of its issuer is refused.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// Whether the set still holds the key `fingerprint` under `kid` (under any id when the key
    /// had none): a token that key verified would verify again.
    pub fn holds(&self, kid: Option<&str>, fingerprint: &KeyFingerprint) -> bool {
        self.keys
            .iter()
            .any(|key| key.fingerprint == *fingerprint && kid.is_none_or(|kid| key.kid.as_deref() == Some(kid)))
    }
}

fn usable_key(entry: &Value) -> Result<VerificationKey, String> {
    let kty = entry.get("kty").and_then(Value::as_str).unwrap_or_default();
    if kty == "oct" {
        return Err("symmetric (`oct`) keys are refused".into());
    }
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|error| format!("unreadable key: {error}"))?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("encryption key".into());
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus =
                URL_SAFE_NO_PAD.decode(rsa.n.trim_end_matches('=')).map_err(|_| "bad RSA modulus".to_string())?;
            let bits = modulus.iter().skip_while(|&&byte| byte == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is under {MIN_RSA_BITS}"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return Err("unsupported elliptic curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => KeyKind::Ed25519,
        _ => return Err(format!("unsupported key type `{kty}`")),
    };
    let pinned = match entry.get("alg").and_then(Value::as_str) {
        Some(pinned) => {
            let algorithm = pinned.parse::<Algorithm>().map_err(|_| format!("unsupported key alg `{pinned}`"))?;
            if key_kind_for(algorithm) != Some(kind) {
                return Err(format!("key alg `{algorithm:?}` does not fit key type `{kty}`"));
            }
            Some(algorithm)
        }
        None => None,
    };
    let material = public_key_material(&jwk.algorithm)?;
    let accepted = ACCEPTED
        .into_iter()
        .filter(|&algorithm| key_kind_for(algorithm) == Some(kind) && pinned.is_none_or(|pinned| pinned == algorithm));
    let parsed = accepted
        .map(|algorithm| {
            let parsed = match (&material, lc_algorithm(algorithm)) {
                (KeyMaterial::Rsa { n, e }, Some(LcAlgorithm::Rsa(parameters))) => {
                    RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.to_parsed_public_key(parameters)
                }
                (KeyMaterial::Bytes(bytes), Some(LcAlgorithm::Other(lc_algorithm))) => {
                    ParsedPublicKey::new(lc_algorithm, bytes)
                }
                _ => return Err(format!("key type `{kty}` cannot verify `{algorithm:?}`")),
            };
            parsed.map(|key| (algorithm, key)).map_err(|error| format!("unusable key: {error}"))
        })
        .collect::<Result<Box<[_]>, String>>()?;
    let fingerprint = KeyFingerprint::of(kind, &material, &parsed);
    Ok(VerificationKey { kid: jwk.common.key_id.map(Arc::from), fingerprint, kind, parsed })
}

/// A JWK's public key, decoded: RSA components, or the bytes aws-lc reads (an uncompressed
/// EC point, an Ed25519 key).
enum KeyMaterial {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Bytes(Vec<u8>),
}

fn public_key_material(parameters: &AlgorithmParameters) -> Result<KeyMaterial, String> {
    let decode = |field: &str, text: &str| {
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| format!("bad base64url in `{field}`"))
    };
    match parameters {
        AlgorithmParameters::RSA(rsa) => Ok(KeyMaterial::Rsa { n: decode("n", &rsa.n)?, e: decode("e", &rsa.e)? }),
        AlgorithmParameters::EllipticCurve(ec) => {
            let mut point = vec![0x04];
            point.extend(decode("x", &ec.x)?);
            point.extend(decode("y", &ec.y)?);
            Ok(KeyMaterial::Bytes(point))
        }
        AlgorithmParameters::OctetKeyPair(okp) => Ok(KeyMaterial::Bytes(decode("x", &okp.x)?)),
        _ => Err("unsupported key type".into()),
    }
}

/// A token split into its parts, before any check of its signature.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedToken<'t> {
    /// The header's `alg`, one of the accepted signing algorithms.
    pub algorithm: Algorithm,
    /// The header's `kid`, naming the key that signed the token.
    pub kid: Option<String>,
    /// The payload segment, base64url as in the token.
    pub payload_segment: &'t str,
    /// The registered claims a check reads (`iss`, `sub`, `aud`, `exp`, `nbf`) and those the
    /// caller of [`parse`] wants; the others were checked to be JSON and skipped.
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: &'t str,
}

impl ParsedToken<'_> {
    /// The `iss` claim, if it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    // Strict base64url: no padding, no whitespace, canonical trailing bits.
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| JwtError::VerificationFails)
}

/// The claims every verification reads: the issuer picks the rule, the lifetime and audiences
/// are checked, the subject is kept, and each has its type checked as Envoy does.
const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// Whether the registered claims a token carries have the types Envoy's jwt_verify_lib
/// (`Jwt::parseFromString`) demands; a token breaking one is refused before its issuer or keys
/// are looked at. `iss`, `sub` and `jti` must be strings (`null` is not one); `aud` a string
/// or a list of strings only; `exp`, `nbf` and `iat` numbers from 0 to under 2^64, fractions
/// allowed. An absent claim is fine; an empty string is a string.
fn has_registered_claim_types(claims: &Map<String, Value>) -> bool {
    let is_string_if_present = |name| claims.get(name).is_none_or(Value::is_string);
    let audience_fits = match claims.get("aud") {
        None | Some(Value::String(_)) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    };
    ["iss", "sub", "jti"].into_iter().all(is_string_if_present)
        && audience_fits
        && ["exp", "nbf", "iat"].into_iter().all(|name| numeric_date(claims, name).is_ok())
}

/// Splits and decodes a compact JWS, keeping the registered claims and the top-level claims
/// `wanted` names. Refuses anything but three non-empty parts (JWE has five), unknown or
/// forbidden algorithms and `crit` headers.
pub fn parse<'t>(token: &'t str, max_bytes: usize, wanted: &dyn Fn(&str) -> bool) -> Result<ParsedToken<'t>, JwtError> {
    if token.len() > max_bytes {
        return Err(JwtError::VerificationFails);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(JwtError::BadFormat);
    }
    let header_json: Map<String, Value> =
        serde_json::from_slice(&decode_segment(header)?).map_err(|_| JwtError::VerificationFails)?;
    if header_json.contains_key("crit") {
        return Err(JwtError::VerificationFails);
    }
    let algorithm = header_json
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|alg| alg.parse::<Algorithm>().ok())
        .filter(|alg| ACCEPTED.contains(alg))
        .ok_or(JwtError::VerificationFails)?;
    let kid = match header_json.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::VerificationFails),
    };
    let claims = read_claims(&decode_segment(payload)?, &|name| REGISTERED_CLAIMS.contains(&name) || wanted(name))
        .map_err(|_| JwtError::VerificationFails)?;
    if !has_registered_claim_types(&claims) {
        return Err(JwtError::VerificationFails);
    }
    let signing_input = &token[..header.len() + 1 + payload.len()];
    Ok(ParsedToken { algorithm, kid, payload_segment: payload, claims, signing_input, signature })
}

/// The claims of a payload that `wanted` names. The payload must be what
/// `serde_json::from_slice` reads as a map: UTF-8, one JSON object, nothing after it; the
/// claims not wanted are read as JSON but not built ([`Unbuilt`]), which spares a Keycloak token's dozens of
/// allocations for claims no policy reads. A repeated claim keeps its last value.
fn read_claims(json: &[u8], wanted: &dyn Fn(&str) -> bool) -> Result<Map<String, Value>, serde_json::Error> {
    let text = std::str::from_utf8(json).map_err(|error| serde::de::Error::custom(error.to_string()))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let claims = (&mut deserializer).deserialize_map(WantedClaims(wanted))?;
    deserializer.end()?;
    Ok(claims)
}

struct WantedClaims<'w>(&'w dyn Fn(&str) -> bool);

impl<'de> Visitor<'de> for WantedClaims<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut claims = Map::new();
        while let Some(ClaimName(name)) = map.next_key()? {
            if (self.0)(&name) {
                claims.insert(name.into_owned(), map.next_value()?);
            } else {
                map.next_value::<Unbuilt>()?;
            }
        }
        Ok(claims)
    }
}

/// A JSON value read as `serde_json::Value` reads it, refusing what it refuses (a number out
/// of range), but not built. `serde::de::IgnoredAny` would only scan for the value's end.
struct Unbuilt;

impl<'de> Deserialize<'de> for Unbuilt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnbuiltVisitor)
    }
}

struct UnbuiltVisitor;

impl<'de> Visitor<'de> for UnbuiltVisitor {
    type Value = Unbuilt;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Unbuilt, E> {
        Ok(Unbuilt)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Unbuilt, E> {
        Ok(Unbuilt)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Unbuilt, E> {
        Ok(Unbuilt)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Unbuilt, E> {
        Ok(Unbuilt)
    }

    fn visit_str<E>(self, _: &str) -> Result<Unbuilt, E> {
        Ok(Unbuilt)
    }

    fn visit_unit<E>(self) -> Result<Unbuilt, E> {
        Ok(Unbuilt)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Unbuilt, A::Error> {
        while items.next_element::<Unbuilt>()?.is_some() {}
        Ok(Unbuilt)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Unbuilt, A::Error> {
        while entries.next_entry::<Unbuilt, Unbuilt>()?.is_some() {}
        Ok(Unbuilt)
    }
}

/// A claim's name, borrowed from the payload unless it has escapes.
struct ClaimName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for ClaimName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl<'de> Visitor<'de> for NameVisitor {
            type Value = ClaimName<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a claim name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(ClaimName(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(ClaimName(Cow::Owned(name.to_owned())))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

/// Whether `keys` hold a key that fits the token's `kid` and `alg`: without one, verifying it
/// is refused with [`JwtError::KeyNotFound`].
pub fn has_key_for(token: &ParsedToken<'_>, keys: &KeySet) -> bool {
    keys.keys.iter().any(|key| key.for_token(token.algorithm, token.kid.as_deref()).is_some())
}

/// Checks the signature with the first key of `keys` that fits the token's `kid` and `alg`;
/// returns the key that verified it.
pub fn verify_signature<'k>(token: &ParsedToken<'_>, keys: &'k KeySet) -> Result<&'k VerificationKey, JwtError> {
    let mut candidates = keys
        .keys
        .iter()
        .filter_map(|key| key.for_token(token.algorithm, token.kid.as_deref()).map(|parsed| (key, parsed)))
        .peekable();
    if candidates.peek().is_none() {
        return Err(JwtError::KeyNotFound);
    }
    let signature = decode_segment(token.signature)?;
    for (key, parsed) in candidates {
        if parsed.verify_sig(token.signing_input.as_bytes(), &signature).is_ok() {
            return Ok(key);
        }
    }
    Err(JwtError::VerificationFails)
}

/// Where Envoy's NumericDate range ends: it reads a date into a `uint64_t`, refusing a value
/// at or over 2^64 (as a double) and a negative one.
const NUMERIC_DATE_END: f64 = 18_446_744_073_709_551_616.0;

/// A NumericDate claim: a JSON number (integer or not) from 0 to under 2^64; anything else is
/// malformed.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_f64()
            .filter(|value| (0.0..NUMERIC_DATE_END).contains(value))
            .map(Some)
            .ok_or(JwtError::VerificationFails),
        Some(_) => Err(JwtError::VerificationFails),
    }
}

/// A token's `exp` and `nbf`, seconds since the epoch (fractions allowed); infinite when absent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetime {
    expires_at: f64,
    not_before: f64,
}

impl Lifetime {
    /// Neither `exp` nor `nbf`.
    pub const UNBOUNDED: Self = Self { expires_at: f64::INFINITY, not_before: f64::NEG_INFINITY };

    /// Reads `exp` and `nbf`; a claim that is not a number makes the token malformed.
    pub fn of(claims: &Map<String, Value>) -> Result<Self, JwtError> {
        Ok(Self {
            expires_at: numeric_date(claims, "exp")?.unwrap_or(Self::UNBOUNDED.expires_at),
            not_before: numeric_date(claims, "nbf")?.unwrap_or(Self::UNBOUNDED.not_before),
        })
    }

    /// Checks `exp` and `nbf` at `now` (seconds since the epoch) with `skew_secs` of tolerance.
    pub fn check(&self, now: u64, skew_secs: u64) -> Result<(), JwtError> {
        let now = now as f64;
        let skew = skew_secs as f64;
        if self.expires_at + skew <= now {
            return Err(JwtError::Expired);
        }
        if self.not_before - skew > now {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    /// `exp`, when the token has one.
    pub fn expires_at(&self) -> Option<f64> {
        self.expires_at.is_finite().then_some(self.expires_at)
    }
}

/// Whether the token's `aud` (a string or a list of strings) names one of `allowed`.
pub fn audience_allowed(claims: &Map<String, Value>, allowed: &[Box<str>]) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => allowed.iter().any(|want| **want == *aud),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).any(|aud| allowed.iter().any(|want| **want == *aud))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads that `serde_json::from_slice` reads as a map, and some it refuses.
    const PAYLOADS: &[&[u8]] = &[
        br#"{"iss":"https://idp","sub":"u1","exp":1.5e9,"realm_access":{"roles":["admin"]},"scope":"a b"}"#,
        br#"{"sub":"first","sub":"last","x":1,"x":[2]}"#,
        br#"{"su\u0062":"escaped name","na\"me":"quote","\u00e9":"\u00e9"}"#,
        br#" { "aud" : [ "a" , "b" ] , "deep" : [[[[{"a":[null,true,false,-0.0,1e300,-9223372036854775809]}]]]] } "#,
        br#"{"skipped":[{"a":1e400}]}"#,
        br#"{"skipped":{"k":"v","k":"w"}}"#,
        br#"{}"#,
        br#"{"sub":"u1"} trailing"#,
        br#"{"sub":"u1",}"#,
        br#"{"skipped":[1,2,}"#,
        br#"{"skipped":"\q"}"#,
        b"{\"skipped\":\"\xff\"}",
        b"{\"skipped\":\"\x01\"}",
        br#"["not","an","object"]"#,
        br#""sub""#,
        br#"{"sub":"u1""#,
        b"",
    ];

    #[test]
    fn wanted_claims_read_as_serde_json_reads_the_whole_payload() {
        for payload in PAYLOADS {
            let shown = String::from_utf8_lossy(payload);
            let whole = serde_json::from_slice::<Map<String, Value>>(payload).ok();
            assert_eq!(read_claims(payload, &|_| true).ok(), whole, "{shown}: every claim wanted");
            let subject_only = read_claims(payload, &|name| name == "sub").ok();
            let expected = whole.map(|mut claims| {
                claims.retain(|name, _| name == "sub");
                claims
            });
            assert_eq!(subject_only, expected, "{shown}: only `sub` wanted");
        }
    }

    #[test]
    fn a_skipped_claim_nested_past_serde_jsons_limit_is_refused_as_it_would_be() {
        for depth in [100, 127, 128, 129, 1000] {
            let payload = format!(r#"{{"sub":"u","skipped":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            let whole = serde_json::from_str::<Map<String, Value>>(&payload).is_ok();
            assert_eq!(read_claims(payload.as_bytes(), &|name| name == "sub").is_ok(), whole, "depth {depth}");
        }
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_refused_even_where_no_claim_is_wanted() {
        assert!(read_claims(b"{\"skipped\":\"\xc3\"}", &|_| false).is_err());
        assert!(read_claims(b"{\"\xc3\":1}", &|_| false).is_err());
    }
}
