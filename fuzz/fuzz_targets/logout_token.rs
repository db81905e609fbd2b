//! Fuzzes back-channel logout token verification: any token, or any claims signed with the provider's key, is accepted or refused without a panic, and nothing is accepted whose signature the provider's public key does not verify.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use portcullis::core::jwt::KeySet;
use portcullis::core::logout_token::{LogoutTokenExpectations, verify};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://issuer.fuzz";
const RSA_PEM: &[u8] = include_bytes!("../../tests/keys/rsa-2048.pem");
const EC_PEM: &[u8] = include_bytes!("../../tests/keys/ec-p256.pem");

/// The provider's signing keys, by `kid`.
fn signing_keys() -> [(&'static str, Algorithm, Option<EncodingKey>); 2] {
    [
        ("rsa", Algorithm::RS256, EncodingKey::from_rsa_pem(RSA_PEM).ok()),
        ("ec", Algorithm::ES256, EncodingKey::from_ec_pem(EC_PEM).ok()),
    ]
}

/// The provider's published JWKS, as the key store holds it.
fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = signing_keys()
            .into_iter()
            .filter_map(|(kid, algorithm, key)| {
                let mut jwk = Jwk::from_encoding_key(&key?, algorithm).ok()?;
                jwk.common.key_id = Some(kid.into());
                Some(jwk)
            })
            .collect();
        KeySet::from_jwks_json(&serde_json::to_string(&JwkSet { keys }).unwrap_or_default()).unwrap_or_default()
    })
}

/// Whether the provider's public key of `kid` verifies the token's signature, checked by
/// jsonwebtoken rather than by the core's own verification.
fn signature_verifies(token: &str) -> bool {
    let Some((input, signature)) = token.rsplit_once('.') else { return false };
    let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
    signing_keys().into_iter().any(|(kid, algorithm, key)| {
        let Some(Ok(jwk)) = key.map(|key| Jwk::from_encoding_key(&key, algorithm)) else { return false };
        let Ok(public) = DecodingKey::from_jwk(&jwk) else { return false };
        header.kid.as_deref() == Some(kid)
            && header.alg == algorithm
            && jsonwebtoken::crypto::verify(signature, input.as_bytes(), &public, algorithm).unwrap_or(false)
    })
}

/// Mode 0: the bytes are the token. Mode 1: header JSON, payload JSON and signature separated
/// by 0xFF, each base64url-encoded here. Otherwise: the bytes are claims, signed with the
/// provider's key (odd modes RSA, even ones EC), so that the checks after the signature are explored.
fn token_from(data: &[u8]) -> Option<String> {
    let (mode, rest) = data.split_first()?;
    match mode {
        0 => std::str::from_utf8(rest).ok().map(str::to_string),
        1 => Some(
            rest.split(|&byte| byte == 0xFF).map(|part| URL_SAFE_NO_PAD.encode(part)).collect::<Vec<_>>().join("."),
        ),
        _ => {
            let claims: serde_json::Value = serde_json::from_slice(rest).ok()?;
            let [rsa, ec] = signing_keys();
            let (kid, algorithm, key) = if mode % 2 == 1 { rsa } else { ec };
            let header = Header { kid: Some(kid.into()), typ: Some("logout+jwt".into()), ..Header::new(algorithm) };
            jsonwebtoken::encode(&header, &claims, &key?).ok()
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(token) = token_from(data) else { return };
    let expected = LogoutTokenExpectations {
        issuer: ISSUER,
        client_id: "portcullis",
        now: NOW,
        clock_skew_secs: 60,
        max_age_secs: 120,
        max_token_bytes: 8192,
    };
    if let Ok(claims) = verify(&token, key_set(), &expected) {
        assert!(signature_verifies(&token), "accepted without a valid signature: {token}");
        assert!(!claims.jti.is_empty() && (claims.sid.is_some() || claims.sub.is_some()), "{claims:?}");
        assert!(claims.replay_window_secs >= 1, "{claims:?}");
    }
});
