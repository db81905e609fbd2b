//! Criterion micro-benchmarks of token verification: RS256 and ES256, cold (parse, signature, claims) and from the verified-token cache, the signature alone (the crypto ceiling) with keys parsed once as portcullis keeps them and as jsonwebtoken parses them on every call, and each stage of a cold RS256 check apart.

#![expect(clippy::expect_used, reason = "bench set-up: a fixture that cannot be built ends the run")]

mod fixtures;

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use portcullis::core::HttpRequest;
use portcullis::core::authn::{self, Authentication, AuthnContext, JwtRule};
use portcullis::core::jwt::{self, KeySet};
use portcullis::identity::token_cache::{TokenKey, VerifiedTokenCache};
use portcullis::telemetry::Metrics;

use fixtures::engine::Engine;
use fixtures::job_board_policy_text;
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

/// Distinct tokens the cache stages cycle through: more than the hot layer's slots, fewer than
/// the cache holds, so that an insert neither evicts nor finds the cache empty.
const CACHE_STAGE_TOKENS: usize = 4_096;

/// Each stage of a cold RS256 check, in the order the server runs them, on the job-board
/// policy set (so the token's read keeps the claims that set reads): the cache lookup that
/// misses (the token's SHA-256 and two probes), the base64url decoding of header and payload,
/// the token's read (that decoding again, and the JSON of the header and of the claims kept),
/// the verification of what was read (the signature, then lifetime, audience and the identity
/// built), and the insert of the identity into the cache (its digest already computed). `make
/// bench` subtracts `decode` from `read` and `signature/rs256` from `verify` to show the JSON
/// parse and the rest of the verification apart.
fn cold_stages(c: &mut Criterion) {
    let engine = Engine::from_yaml(&job_board_policy_text().expect("job-board policies")).expect("compiles");
    // The rule as the snapshot hands it to a check: keeping the claims the policy set reads.
    let rule = Arc::new(
        engine.jwt_rules.first().expect("the bench RequestAuthentication").keeping(engine.snapshot.kept_claims()),
    );
    let rules = [&rule];
    let context = engine.context();
    let signer = TokenSigner::new(Alg::Rs256).expect("bench key");
    let now = unix_now();
    let tokens: Vec<String> = (0..CACHE_STAGE_TOKENS as u64)
        .map(|serial| signer.sign(&keycloak_claims(serial, JOB_BOARD_ROLES, now)).expect("signs"))
        .collect();
    let token = tokens.first().expect("a token");
    let authorization = format!("Bearer {token}");
    let http = HttpRequest { headers: vec![("authorization", authorization.as_str())], ..HttpRequest::default() };
    let credentials = authn::find_credentials(&rules, &http).expect("a bearer token");
    let credential = credentials.resolution().pending().expect("one credential");
    let unverified = credential.read(engine.settings.max_token_bytes).expect("reads");
    let keys = unverified.key_set(context.keys).expect("inline keys");
    let identity = match unverified.verify(Some(&keys), &context) {
        Authentication::Verified { identity, .. } => Some(identity),
        _ => None,
    }
    .expect("the bench token verifies");
    let (header, rest) = token.split_once('.').expect("a header");
    let (payload, _) = rest.split_once('.').expect("a payload");

    let mut group = c.benchmark_group("cold_stage/rs256");
    let cache = VerifiedTokenCache::new(engine.settings.token_cache_entries, Arc::new(Metrics::new()));
    group.bench_function("cache_miss", |b| {
        b.iter(|| cache.get(&TokenKey::new(black_box(token))));
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            let header = URL_SAFE_NO_PAD.decode(black_box(header)).map(|bytes| bytes.len());
            let payload = URL_SAFE_NO_PAD.decode(black_box(payload)).map(|bytes| bytes.len());
            (header, payload)
        });
    });
    group.bench_function("read", |b| b.iter(|| credential.read(black_box(engine.settings.max_token_bytes)).is_ok()));
    group.bench_function("verify", |b| {
        b.iter(|| matches!(unverified.verify(Some(black_box(&keys)), &context), Authentication::Verified { .. }));
    });
    let mut next = tokens.iter().cycle();
    group.bench_function("cache_insert", |b| {
        b.iter_batched(
            || {
                let key = TokenKey::new(next.next().expect("a cycle never ends"));
                key.digest();
                key
            },
            |key| cache.put(&key, identity.clone()),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, verification, cold_stages);
criterion_main!(benches);
