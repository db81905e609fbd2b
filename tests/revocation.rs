//! The revocation list through the real binary: the admin endpoint (its token, its answers), a revoked JWT refused on a token-cache hit with gRPC UNAUTHENTICATED and an `invalid_token` challenge, a subject revoked for what it held before, a bearer-token issuer's back-channel logout ending a `sid`, and the endpoints off without their settings.

mod forge;
mod support;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use forge::{Behavior, FakeIdp, RSA, jwks, public_jwk, sign, unix_now};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::{CheckBuilder, Server, config_file, http_request, policy_dir, raw_http};

const ISSUER: &str = "https://people.test";
const ADMIN_TOKEN: &str = "adm-7f3e0c1d9b2a4e6f8a0b";
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Namespace `jobs` verifies tokens of [`ISSUER`] with the inline key `rsa` (or the keys at
/// `jwks_uri`) and lets in any verified caller.
fn policies(jwks_uri: Option<&str>) -> String {
    let keys = match jwks_uri {
        Some(uri) => format!("jwksUri: {uri}"),
        None => format!("jwks: '{}'", jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])),
    };
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: people, namespace: jobs}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    {keys}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: anyone-known, namespace: jobs}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
"#
    )
}

/// A token of `sub` with these `extra` claims, valid for ten minutes.
fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"iss": ISSUER, "sub": sub, "exp": unix_now() + 600, "iat": unix_now()});
    if let (Value::Object(claims), Value::Object(extra)) = (&mut claims, extra) {
        claims.extend(extra);
    }
    sign(RSA, Algorithm::RS256, Some("rsa"), &claims)
}

/// A server with `revocation` set to `block` (YAML lines under it); the admin token in its variable.
fn start(policies: &tempfile::TempDir, block: &str) -> (Server, tempfile::NamedTempFile) {
    let settings = config_file(&format!("revocation:\n{block}"));
    let server =
        Server::start_with_env(&[policies.path()], Some(settings.path()), &[("REVOCATION_ADMIN_TOKEN", ADMIN_TOKEN)]);
    (server, settings)
}

async fn check(server: &Server, token: &str) -> CheckResponse {
    server.check(CheckBuilder::new("GET", "/jobs").namespace("jobs").bearer(token).build()).await
}

/// The status a proxy answers, the body of a refusal, its `www-authenticate`, and the gRPC code.
fn answer(response: &CheckResponse) -> (u16, String, Option<String>, i32) {
    let (status, body) = support::proxy_answer(response);
    let challenge = match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied
            .headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .find(|header| header.key.eq_ignore_ascii_case("www-authenticate"))
            .map(|header| header.value.clone()),
        _ => None,
    };
    (status, body, challenge, response.status.as_ref().map_or(0, |status| status.code))
}

/// A POST of `body` to the admin door: status and body.
fn post(server: &Server, path: &str, headers: &[(&str, &str)], content_type: &str, body: &str) -> (u16, String) {
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = raw_http(server.admin, request.as_bytes());
    (status, body)
}

fn admin_post(server: &Server, body: &Value) -> (u16, Value) {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) =
        post(server, "/revocations", &[("Authorization", &bearer)], "application/json", &body.to_string());
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_revoked_token_is_refused_even_when_the_token_cache_remembers_it() {
    let policies = policy_dir(&policies(None));
    let (server, _settings) = start(&policies, "  admin_token_env: REVOCATION_ADMIN_TOKEN\n");
    let first = token("alice", json!({"jti": "j-1", "sid": "s-1"}));
    assert_eq!(answer(&check(&server, &first).await).0, 200);
    assert_eq!(answer(&check(&server, &first).await).0, 200, "allowed again, from the cache");
    let hits = server.metric("portcullis_token_cache_hits_total").expect("cache hits");
    assert!(hits >= 1.0, "{hits}");

    let (status, added) = admin_post(&server, &json!({"issuer": ISSUER, "jti": "j-1"}));
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["shared"], json!(true), "without Redis the list is this replica's alone, and whole");
    let (status, body, challenge, code) = answer(&check(&server, &first).await);
    assert_eq!((status, body.as_str(), code), (401, "Token has been revoked", 16), "gRPC UNAUTHENTICATED");
    let challenge = challenge.expect("a bearer challenge");
    assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    assert!(server.metric("portcullis_token_cache_hits_total").expect("cache hits") > hits, "refused on a cache hit");

    let second = token("alice", json!({"jti": "j-2"}));
    assert_eq!(answer(&check(&server, &second).await).0, 200, "another token of the same person still counts");
    let (status, _) = admin_post(&server, &json!({"issuer": ISSUER, "sub": "alice"}));
    assert_eq!(status, 200);
    assert_eq!(answer(&check(&server, &second).await).1, "Token has been revoked", "issued before the revocation");
    let later = {
        let claims =
            json!({"iss": ISSUER, "sub": "alice", "jti": "j-3", "exp": unix_now() + 600, "iat": unix_now() + 5});
        sign(RSA, Algorithm::RS256, Some("rsa"), &claims)
    };
    assert_eq!(answer(&check(&server, &later).await).0, 200, "issued after the revocation");
    let bob = token("bob", json!({"jti": "j-1-bob"}));
    assert_eq!(answer(&check(&server, &bob).await).0, 200);

    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, listed) = http_request(server.admin, "GET", "/revocations?limit=1", &[("Authorization", &bearer)]);
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!((status, listed["total"].as_u64(), listed["entries"].as_array().map(Vec::len)), (200, Some(2), Some(1)));
    let exposition = http_request(server.admin, "GET", "/metrics", &[]).2;
    for (series, value) in [
        ("portcullis_revocation_additions_total{source=\"admin\"}", 2.0),
        ("portcullis_revocation_additions_total{source=\"back_channel\"}", 0.0),
        ("portcullis_revocation_entries", 2.0),
        ("portcullis_revocation_refusals_total", 2.0),
        ("portcullis_revocation_list_age_seconds", 0.0),
    ] {
        assert_eq!(support::metric_in(&exposition, series), Some(value), "{series}");
    }
    assert!(!server.log_lines().iter().any(|line| line.contains(ADMIN_TOKEN)), "the admin token is never logged");
}

#[tokio::test]
async fn the_admin_endpoint_refuses_callers_without_its_token_and_bodies_it_cannot_read() {
    let policies = policy_dir(&policies(None));
    let (server, _settings) = start(&policies, "  admin_token_env: REVOCATION_ADMIN_TOKEN\n");
    let body = json!({"issuer": ISSUER, "jti": "j-1"}).to_string();
    for (case, headers) in [
        ("no token", vec![]),
        ("another token", vec![("Authorization", "Bearer adm-wrong")]),
        ("not a bearer", vec![("Authorization", ADMIN_TOKEN)]),
    ] {
        let (status, _) = post(&server, "/revocations", &headers, "application/json", &body);
        assert_eq!(status, 401, "{case}");
        let (status, _, _) = http_request(server.admin, "GET", "/revocations", &headers);
        assert_eq!(status, 401, "{case}");
    }
    let now = unix_now();
    for (case, body) in [
        ("no name", json!({"issuer": ISSUER})),
        ("no issuer", json!({"jti": "j"})),
        ("two names", json!({"issuer": ISSUER, "jti": "j", "sid": "s"})),
        ("before without sub", json!({"issuer": ISSUER, "jti": "j", "before": now})),
        ("an end in the past", json!({"issuer": ISSUER, "jti": "j", "expires_at": now - 1})),
        ("an unknown member", json!({"issuer": ISSUER, "jti": "j", "audience": "x"})),
        ("not an object", json!(["jti"])),
        ("an empty name", json!({"issuer": ISSUER, "jti": ""})),
    ] {
        let (status, answer) = admin_post(&server, &body);
        assert_eq!(status, 400, "{case}: {answer}");
        assert!(answer["error"].is_string(), "{case}: {answer}");
    }
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, _) = post(&server, "/revocations", &[("Authorization", &bearer)], "application/json", "{");
    assert_eq!(status, 400, "not JSON");
    let (status, _, _) = http_request(server.admin, "DELETE", "/revocations", &[("Authorization", &bearer)]);
    assert_eq!(status, 405, "a revocation ends at its expiry only");
    let (status, _, _) = http_request(server.admin, "GET", "/revocations?limit=x", &[("Authorization", &bearer)]);
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_an_admin_token_or_logout_issuers_the_endpoints_are_not_served() {
    let policies = policy_dir(&policies(None));
    let (server, _settings) = start(&policies, "  enabled: true\n");
    let body = json!({"issuer": ISSUER, "jti": "j-1"}).to_string();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(post(&server, "/revocations", &[("Authorization", &bearer)], "application/json", &body).0, 404);
    let form = "application/x-www-form-urlencoded";
    assert_eq!(post(&server, "/revocations/backchannel_logout", &[], form, "logout_token=x").0, 404);
    let alice = token("alice", json!({"jti": "j-1"}));
    assert_eq!(answer(&check(&server, &alice).await).0, 200);
}

#[tokio::test]
async fn a_back_channel_logout_of_a_bearer_token_issuer_revokes_its_session_and_is_taken_once() {
    let idp = FakeIdp::start(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    let policies = policy_dir(&policies(Some(&idp.url("/jwks"))));
    let block = format!("  logout_token_issuers: [{{issuer: '{ISSUER}', client_id: jobs-api}}]\n");
    let (server, _settings) = start(&policies, &block);
    let in_session = token("alice", json!({"jti": "j-1", "sid": "s-9"}));
    let other_session = token("alice", json!({"jti": "j-2", "sid": "s-10"}));
    assert_eq!(answer(&check(&server, &in_session).await).0, 200);

    let now = unix_now();
    let logout = |claims: Value| sign(RSA, Algorithm::RS256, Some("rsa"), &claims);
    let claims = json!({"iss": ISSUER, "aud": "jobs-api", "iat": now, "exp": now + 120, "jti": "logout-1",
                        "sid": "s-9", "sub": "alice", "events": {LOGOUT_EVENT: {}}});
    let form = "application/x-www-form-urlencoded";
    let path = "/revocations/backchannel_logout";
    let (status, body) = post(&server, path, &[], form, &format!("logout_token={}", logout(claims.clone())));
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(answer(&check(&server, &in_session).await).1, "Token has been revoked");
    assert_eq!(answer(&check(&server, &other_session).await).0, 200, "the sid alone, not the person");

    let (status, body) = post(&server, path, &[], form, &format!("logout_token={}", logout(claims.clone())));
    assert_eq!((status, body.as_str()), (400, r#"{"error":"invalid_request"}"#), "a replay");
    let mut for_another_client = claims.clone();
    for_another_client["aud"] = json!("someone-else");
    for_another_client["jti"] = json!("logout-2");
    assert_eq!(post(&server, path, &[], form, &format!("logout_token={}", logout(for_another_client))).0, 400);
    let mut from_elsewhere = claims;
    from_elsewhere["iss"] = json!("https://elsewhere.test");
    from_elsewhere["jti"] = json!("logout-3");
    assert_eq!(post(&server, path, &[], form, &format!("logout_token={}", logout(from_elsewhere))).0, 400);
    assert_eq!(post(&server, path, &[], "application/json", "{}").0, 400, "not a form");
    let exposition = http_request(server.admin, "GET", "/metrics", &[]).2;
    let series = "portcullis_revocation_additions_total{source=\"back_channel\"}";
    assert_eq!(support::metric_in(&exposition, series), Some(1.0));
}
