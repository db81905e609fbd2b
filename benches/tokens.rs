//! Criterion micro-benchmarks of token verification: RS256 and ES256, cold (parse, signature, claims) and from the verified-token cache, and the signature alone (the crypto ceiling), with keys parsed once as portcullis keeps them and as jsonwebtoken parses them on every call.

#![expect(clippy::expect_used, reason = "bench set-up: a fixture that cannot be built ends the run")]

mod fixtures;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use portcullis::core::HttpRequest;
use portcullis::core::authn::{self, Authentication, AuthnContext, JwtRule};
use portcullis::core::jwt::{self, KeySet};
use portcullis::identity::token_cache::VerifiedTokenCache;

use fixtures::engine::Engine;
use fixtures::requests::JOB_BOARD_ROLES;
use fixtures::tokens::{Alg, TokenSigner, jwks_json, keycloak_claims, request_authentication_yaml, unix_now};

/// Whether the request's token verifies: with no cache, or through `cache` as the server resolves it.
fn authenticate<'r>(
    rules: &[&'r Arc<JwtRule>],
    http: &HttpRequest<'r>,
    context: &AuthnContext<'_>,
    cache: Option<&VerifiedTokenCache>,
) -> bool {
    let authentication = match (cache, authn::find_credentials(rules, http)) {
        (Some(cache), Some(credentials)) => {
            credentials.authenticate_with(|credential| cache.authenticate(credential, context))
        }
        _ => authn::authenticate(rules, http, context),
    };
    matches!(authentication, Authentication::Verified { .. })
}

fn verification(c: &mut Criterion) {
    let engine = Engine::from_yaml(&request_authentication_yaml().expect("RequestAuthentication")).expect("compiles");
    let rules: Vec<&Arc<JwtRule>> = engine.jwt_rules.iter().collect();
    let jwks_text = jwks_json().expect("JWKS");
    let keys = KeySet::from_jwks_json(&jwks_text).expect("a JWKS");
    let jwks: JwkSet = serde_json::from_str(&jwks_text).expect("a JWKS");
    let context = engine.context();
    let (cold, cached) = (None, Some(&engine.cache));

    for alg in Alg::ALL {
        let signer = TokenSigner::new(alg).expect("bench key");
        let token = signer.sign(&keycloak_claims(7, JOB_BOARD_ROLES, unix_now())).expect("signs");
        let authorization = format!("Bearer {token}");
        let http = HttpRequest {
            method: "POST",
            path: "/api/jobcategories",
            headers: vec![("authorization", authorization.as_str())],
            ..HttpRequest::default()
        };
        assert!(authenticate(&rules, &http, &context, cold), "the {} token must verify", alg.name());
        assert!(authenticate(&rules, &http, &context, cached), "and fill the cache");

        let mut group = c.benchmark_group("verify_token");
        group.bench_function(format!("{}/cold", alg.name()), |b| {
            b.iter(|| authenticate(&rules, black_box(&http), &context, cold))
        });
        group.bench_function(format!("{}/cache_hit", alg.name()), |b| {
            b.iter(|| authenticate(&rules, black_box(&http), &context, cached));
        });
        group.finish();

        let parsed = jwt::parse(&token, engine.settings.max_token_bytes, &|_| false).expect("parses");
        let mut group = c.benchmark_group("signature");
        group.bench_function(alg.name(), |b| b.iter(|| jwt::verify_signature(black_box(&parsed), &keys)));
        group.finish();

        // The same check through jsonwebtoken, which rebuilds the key from the JWK's
        // components on every call.
        let jwk = jwks.keys.iter().find(|jwk| jwk.common.key_id.as_deref() == Some(alg.kid())).expect("bench JWK");
        let decoding_key = DecodingKey::from_jwk(jwk).expect("a usable JWK");
        let (message, signature) = token.rsplit_once('.').expect("three segments");
        let mut group = c.benchmark_group("signature_jsonwebtoken");
        group.bench_function(alg.name(), |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(signature, black_box(message.as_bytes()), &decoding_key, alg.algorithm())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, verification);
criterion_main!(benches);
