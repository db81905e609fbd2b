//! Fuzzes token parsing and verification against a fixed key set, and the whole authentication path of a check.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use portcullis::config::load::load_policy_text;
use portcullis::core::authn::{AuthnContext, NoRemoteKeys};
use portcullis::core::jwt::{self, KeySet};
use portcullis::core::workload::WorkloadTable;
use portcullis::core::{EngineOptions, HttpRequest, Request, Snapshot, StrMap};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://issuer.fuzz";

/// The public halves of the test keys, as the JWKS an IdP would publish.
fn jwks_json() -> String {
    let keys: [(&[u8], Algorithm, &str); 4] = [
        (include_bytes!("../../tests/keys/rsa-2048.pem"), Algorithm::RS256, "rsa"),
        (include_bytes!("../../tests/keys/rsa-2048-other.pem"), Algorithm::PS256, "other"),
        (include_bytes!("../../tests/keys/ec-p256.pem"), Algorithm::ES256, "ec"),
        (include_bytes!("../../tests/keys/ed25519.pem"), Algorithm::EdDSA, "ed"),
    ];
    let keys = keys
        .iter()
        .filter_map(|&(pem, algorithm, kid)| {
            let key = match algorithm {
                Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                _ => EncodingKey::from_rsa_pem(pem),
            }
            .ok()?;
            let mut jwk = Jwk::from_encoding_key(&key, algorithm).ok()?;
            jwk.common.key_id = Some(kid.into());
            Some(jwk)
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap_or_default()
}

fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::from_jwks_json(&jwks_json()).unwrap_or_default())
}

/// A set that admits only verified callers, with the same keys inline.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r, namespace: n}}\n\
             spec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n    outputPayloadToHeader: x-jwt-payload\n    \
             outputClaimToHeaders: [{{header: x-user, claim: preferred_username}}, {{header: x-role, claim: realm_access.roles}}]\n\
             ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: n}}\n\
             spec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]\n    \
             when: [{{key: request.auth.claims[realm_access][roles], values: [admin]}}]\n",
            jwks_json()
        );
        let loaded = load_policy_text("fuzz.yaml", &yaml).unwrap_or_default();
        Snapshot::new(loaded.policies, loaded.authn, WorkloadTable::default(), EngineOptions::default(), "istio-system")
    })
}

/// Mode 0: the bytes are the token. Otherwise the bytes are header JSON, payload JSON and
/// signature separated by 0xFF, each base64url-encoded here so the fuzzer explores the JSON.
fn token_from(data: &[u8]) -> Option<String> {
    let (mode, rest) = data.split_first()?;
    if *mode == 0 {
        return std::str::from_utf8(rest).ok().map(str::to_string);
    }
    let parts: Vec<String> = rest.split(|&byte| byte == 0xFF).map(|part| URL_SAFE_NO_PAD.encode(part)).collect();
    Some(parts.join("."))
}

fuzz_target!(|data: &[u8]| {
    let Some(token) = token_from(data) else { return };
    // Which claims a parse builds must not change which tokens it refuses.
    let some_claims = jwt::parse(&token, 8192, &|name| name.len() % 2 == 0);
    assert_eq!(jwt::parse(&token, 8192, &|_| true).is_ok(), some_claims.is_ok(), "{token}");
    if let Ok(parsed) = some_claims {
        let _ = jwt::verify_signature(&parsed, key_set());
        let _ = jwt::Lifetime::of(&parsed.claims).map(|lifetime| (lifetime.check(NOW, 60), lifetime.expires_at()));
        let _ = jwt::audience_allowed(&parsed.claims, &["jobs".into()]);
        let _ = parsed.issuer();
    }
    let extensions = HashMap::from([("namespace".to_string(), "n".to_string())]);
    let bearer = format!("Bearer {token}");
    let query = format!("/x?access_token={token}");
    for (path, headers) in [("/x", vec![("authorization", bearer.as_str())]), (query.as_str(), vec![])] {
        let request = Request {
            http: Some(HttpRequest { method: "GET", scheme: "https", host: "h", path, headers, joined_headers: false }),
            context_extensions: StrMap::from(&extensions),
            ..Request::default()
        };
        let context = AuthnContext {
            keys: &NoRemoteKeys,
            now: NOW,
            clock_skew_secs: 60,
            max_token_bytes: 8192,
        };
        let decision = snapshot().check(&request, &context);
        assert_ne!(decision.reason.as_str(), "internal_error", "a check panicked on token {token:?}");
        for (name, value) in &decision.headers_to_set {
            assert!(!value.bytes().any(|byte| matches!(byte, b'\r' | b'\n' | 0)), "{name}: {value:?}");
        }
    }
});
