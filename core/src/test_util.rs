//! Test helpers for this crate's tests and the server's (feature `test-util`): the keys of `tests/keys/`, signed tokens, a JWT rule; never built into the server.
#![expect(clippy::expect_used, reason = "test helpers: a key or token that cannot be built ends the test")]

use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::authn::{ClaimHeader, JwtRule, KeySource, TokenLocation};
use crate::identity::ClaimPaths;
use crate::jwt::KeySet;
use crate::request::HttpRequest;

/// The clock of the token tests (unix seconds).
pub const NOW: u64 = 1_800_000_000;
/// The issuer of [`claims`] and [`rule`].
pub const ISSUER: &str = "https://idp.example/realms/jobs";

/// The PEM of the test key `name` in `tests/keys/`, built in: the crate reads no files.
fn pem(name: &str) -> &'static [u8] {
    macro_rules! key {
        ($file:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys/", $file))
        };
    }
    match name {
        "rsa-2048.pem" => key!("rsa-2048.pem"),
        "rsa-2048-other.pem" => key!("rsa-2048-other.pem"),
        "ec-p256.pem" => key!("ec-p256.pem"),
        "ed25519.pem" => key!("ed25519.pem"),
        _ => &[],
    }
}

fn encoding_key(name: &str, algorithm: Algorithm) -> EncodingKey {
    let bytes = pem(name);
    match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(bytes),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(bytes),
        _ => EncodingKey::from_rsa_pem(bytes),
    }
    .expect("valid test key")
}

/// A JWKS holding the public halves of `keys` (file, alg, kid).
pub fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|&(name, algorithm, kid)| {
            let mut jwk = Jwk::from_encoding_key(&encoding_key(name, algorithm), algorithm).expect("jwk");
            jwk.common.key_id = Some(kid.into());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).expect("json")
}

/// A token with `claims`, signed with the test key `name` under `kid`.
pub fn sign(name: &str, algorithm: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &encoding_key(name, algorithm)).expect("signs")
}

/// The claims of a usual token: alice, from [`ISSUER`], valid at [`NOW`].
pub fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": ["account", "jobs-api"], "exp": NOW + 300, "iat": NOW,
           "preferred_username": "alice", "level": 3, "admin": false, "realm_access": {"roles": ["user"]},
           "scope": "openid profile"})
}

/// A JWT rule trusting the RSA, EC and Ed25519 test keys, with claim-to-header outputs.
pub fn rule(audiences: &[&str]) -> Arc<JwtRule> {
    let keys = KeySet::from_jwks_json(&jwks(&[
        ("rsa-2048.pem", Algorithm::RS256, "rsa"),
        ("ec-p256.pem", Algorithm::ES256, "ec"),
        ("ed25519.pem", Algorithm::EdDSA, "ed"),
    ]))
    .expect("jwks");
    assert_eq!(keys.len(), 3, "skipped: {:?}", keys.skipped);
    let rule = JwtRule {
        issuer: Some(ISSUER.into()),
        audiences: audiences.iter().map(|audience| (*audience).into()).collect(),
        keys: KeySource::Inline(Arc::new(keys)),
        locations: TokenLocation::defaults(),
        output_payload_to_header: Some("x-jwt-payload".into()),
        output_claim_to_headers: Box::new([
            ClaimHeader { header: "x-user".into(), claim: Box::new(["preferred_username".into()]) },
            ClaimHeader { header: "x-level".into(), claim: Box::new(["level".into()]) },
            ClaimHeader { header: "x-roles".into(), claim: Box::new(["realm_access".into(), "roles".into()]) },
        ]),
        forward_original_token: false,
        space_delimited_claims: Arc::from(vec![Box::from("scope")]),
        verifier: Arc::default(),
    };
    // As a snapshot holding just this rule keeps them.
    let kept = Arc::new(ClaimPaths::new(rule.claim_paths().collect::<Vec<_>>(), false));
    Arc::new(rule.keeping(&kept))
}

/// A request carrying these headers and nothing else.
pub fn request_with(headers: &[(String, String)]) -> HttpRequest<'_> {
    HttpRequest { headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(), ..HttpRequest::default() }
}

/// An `authorization: Bearer` header carrying `token`.
pub fn bearer(token: &str) -> (String, String) {
    ("authorization".into(), format!("Bearer {token}"))
}
