//! Bad tokens through the real server: a repeated one is refused again from the rejected-token cache with the same answer, a flood of distinct ones costs no key fetch each and holds the cache at its bound, and a key rotation makes a rejected token valid.

#![expect(clippy::expect_used, clippy::indexing_slicing, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use forge::{Behavior, FakeIdp, OTHER_RSA, RSA, claims_of, jwks, public_jwk, remote_issuers_in, sign};
use jsonwebtoken::Algorithm;
use serde_json::Value;
use support::{CheckBuilder, Server, config_file, eventually, policy_dir, proxy_answer};
use tonic::transport::Channel;

const ISSUER: &str = "https://idp.test";
const VERIFICATION_FAILS: &str = "Jwt verification fails";
const NO_KEY: &str = "Jwks doesn't have key to match kid or alg from Jwt";

/// A server trusting `idp`'s keys for `ISSUER` in namespace `bad`, with `settings`.
fn server(idp: &FakeIdp, settings: &str) -> (Server, tempfile::TempDir, tempfile::NamedTempFile) {
    let policies = policy_dir(&remote_issuers_in("bad", &[(ISSUER, idp.url("/certs"))]));
    let config = config_file(settings);
    let server = Server::start_with(&[policies.path()], Some(config.path()));
    (server, policies, config)
}

/// The proxy's answer to a GET of `/` in namespace `bad` carrying `token`.
async fn ask(client: &mut AuthorizationClient<Channel>, token: &str) -> (u16, String) {
    let request = CheckBuilder::new("GET", "/").namespace("bad").bearer(token).build();
    proxy_answer(&client.check(request).await.expect("Check answers").into_inner())
}

/// `token` with its payload replaced by `claims`: its signature no longer verifies.
fn forged(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let (header, signature) = (parts.first().copied().unwrap_or(""), parts.last().copied().unwrap_or(""));
    format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

fn claims_with_jti(jti: &str) -> Value {
    let mut claims = claims_of(ISSUER);
    claims["jti"] = jti.into();
    claims
}

fn rejections_cached(server: &Server) -> f64 {
    server.metric("portcullis_token_rejections_cached_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_bad_token_is_verified_once_and_answered_the_same_every_time() {
    let idp = FakeIdp::start(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    let (server, _policies, _config) = server(&idp, "");
    let mut client = server.grpc_client().await;
    let good = sign(RSA, Algorithm::RS256, Some("rsa"), &claims_of(ISSUER));
    let mut expired = claims_of(ISSUER);
    expired["exp"] = 1_000_000.into();
    let cases = [
        ("a bad signature", forged(&good, &claims_with_jti("forged")), VERIFICATION_FAILS),
        (
            "another key under the issuer's kid",
            sign(OTHER_RSA, Algorithm::RS256, Some("rsa"), &claims_of(ISSUER)),
            VERIFICATION_FAILS,
        ),
        ("expired", sign(RSA, Algorithm::RS256, Some("rsa"), &expired), "Jwt is expired"),
        (
            "malformed",
            "not.a-token".to_string(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ];
    for (name, token, reason) in cases {
        let before = rejections_cached(&server);
        for round in 0..5 {
            assert_eq!(ask(&mut client, &token).await, (401, reason.to_string()), "{name}: round {round}");
        }
        assert_eq!(
            rejections_cached(&server) - before,
            4.0,
            "{name}: verified once, refused four times from the cache"
        );
    }
    assert_eq!(ask(&mut client, &good).await, (200, String::new()), "the good token still verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_bad_tokens_fetches_no_keys_each_and_holds_the_cache_at_its_bound() {
    let idp = FakeIdp::start(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    let settings =
        "rejected_token_cache_entries: 32\njwks_min_refetch_interval_secs: 3600\njwks_refetch_wait_ms: 500\n";
    let (server, _policies, _config) = server(&idp, settings);
    let mut client = server.grpc_client().await;
    let good = sign(RSA, Algorithm::RS256, Some("rsa"), &claims_of(ISSUER));
    assert_eq!(ask(&mut client, &good).await, (200, String::new()), "the keys are in before the flood");
    let fetched_before = idp.paths().len();
    for serial in 0..100 {
        let unknown_kid = sign(RSA, Algorithm::RS256, Some(&format!("kid-{serial}")), &claims_of(ISSUER));
        assert_eq!(ask(&mut client, &unknown_kid).await, (401, NO_KEY.to_string()), "unknown kid {serial}");
        let bad_signature = forged(&good, &claims_with_jti(&format!("forged-{serial}")));
        assert_eq!(ask(&mut client, &bad_signature).await, (401, VERIFICATION_FAILS.to_string()), "signature {serial}");
        if serial % 10 == 9 {
            let held = server.metric("portcullis_rejected_token_cache_entries").expect("the gauge is exported");
            assert!(held <= 32.0, "{held} rejections held after {serial}");
        }
    }
    assert_eq!(server.metric("portcullis_rejected_token_cache_entries"), Some(32.0), "full, and no fuller");
    let fetches = idp.paths();
    assert!(fetches.len() <= fetched_before + 1, "one refetch per interval, not one per kid: {fetches:?}");
    assert_eq!(ask(&mut client, &good).await, (200, String::new()), "the good token still verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_that_adds_its_signing_key_makes_a_rejected_token_valid() {
    let idp = FakeIdp::start(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    let (server, _policies, _config) = server(&idp, "jwks_refresh_interval_secs: 1\n");
    let mut client = server.grpc_client().await;
    // Signed by the key the IdP publishes next, under the kid it already has.
    let early = sign(OTHER_RSA, Algorithm::RS256, Some("rsa"), &claims_of(ISSUER));
    for _ in 0..2 {
        assert_eq!(ask(&mut client, &early).await, (401, VERIFICATION_FAILS.to_string()));
    }
    assert!(rejections_cached(&server) >= 1.0, "refused again from the cache");
    idp.set(Behavior::Serve(jwks(&[
        public_jwk(RSA, Algorithm::RS256, Some("rsa")),
        public_jwk(OTHER_RSA, Algorithm::RS256, Some("rsa")),
    ])));
    let mut client = server.grpc_client().await;
    eventually("the rotated keys verify the token", async || ask(&mut client, &early).await.0 == 200).await;
}
