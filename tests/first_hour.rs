//! What a new user meets in the first hour: why an issuer has no keys, its metrics from start-up, a token that does not wait for the next retry, settings errors that name their variable.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest as ProtoHttp, Request as ProtoRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use forge::{Behavior, FakeIdp, RSA, jwks, public_jwk, sign, unix_now};
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::{Server, portcullis};

/// A RequestAuthentication for `issuer` with its keys at `jwks_uri`, and an ALLOW policy for
/// verified callers only, in namespace `first-hour`.
fn policy_dir(issuer: &str, jwks_uri: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: first-hour}}\nspec:\n  jwtRules:\n  - issuer: {issuer}\n    jwksUri: {jwks_uri}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: verified-only, namespace: first-hour}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]\n"
    );
    std::fs::write(dir.path().join("policies.yaml"), yaml).expect("write policies");
    dir
}

/// A loopback URL where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}/certs")
}

fn token(issuer: &str) -> String {
    let claims = json!({"iss": issuer, "sub": "alice", "exp": unix_now() + 600, "iat": unix_now()});
    sign(RSA, Algorithm::RS256, Some("rsa"), &claims)
}

/// The status a proxy would send for a GET of `/` in namespace `first-hour` with `token`.
async fn status_of(grpc: SocketAddr, token: &str) -> u16 {
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(ProtoRequest {
                http: Some(ProtoHttp {
                    method: "GET".into(),
                    path: "/".into(),
                    host: "app.test".into(),
                    headers: HashMap::from([("authorization".to_string(), format!("Bearer {token}"))]),
                    ..ProtoHttp::default()
                }),
                ..ProtoRequest::default()
            }),
            context_extensions: HashMap::from([("namespace".to_string(), "first-hour".to_string())]),
            ..AttributeContext::default()
        }),
    };
    let mut client = AuthorizationClient::connect(format!("http://{grpc}")).await.expect("connects");
    let response = client.check(request).await.expect("Check answers").into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(denied)) => {
            denied.status.map_or(0, |status| u16::try_from(status.code).unwrap_or(0))
        }
        _ => 0,
    }
}

#[test]
fn check_says_on_stderr_why_an_issuer_has_no_keys() {
    let uri = closed_port_url();
    let policies = policy_dir("https://down.test", &uri);
    let request = tempfile::NamedTempFile::new().expect("temp file");
    let body =
        format!("path: /\ncontext_extensions: {{namespace: first-hour}}\ntoken: {}\n", token("https://down.test"));
    std::fs::write(request.path(), body).expect("write request");
    let output = portcullis()
        .args(["check", "--policies"])
        .arg(policies.path())
        .arg("--request")
        .arg(request.path())
        .output()
        .expect("portcullis runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no keys for issuer `https://down.test`"), "{stderr}");
    assert!(stderr.contains(&uri) && stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn every_issuer_has_its_jwks_series_from_start_up() {
    let policies = policy_dir("https://down.test", &closed_port_url());
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config.path(), "jwks_ready_timeout_secs: 5\n").expect("write config");
    let server = Server::start_with(&[policies.path()], Some(config.path()));
    let issuer = r#"issuer="https://down.test""#;
    assert_eq!(server.metric(&format!("portcullis_jwks_keys{{{issuer}}}")), Some(0.0));
    assert_eq!(server.metric(&format!(r#"portcullis_jwks_fetches_total{{{issuer},result="ok"}}"#)), Some(0.0));
    let errors = server.metric(&format!(r#"portcullis_jwks_fetches_total{{{issuer},result="error"}}"#));
    assert!(errors.is_some_and(|errors| errors >= 1.0), "{errors:?}");
    let age = server.metric(&format!("portcullis_jwks_seconds_since_success{{{issuer}}}"));
    assert!(age.is_some_and(|seconds| seconds >= 0.0), "an issuer never fetched ages from start-up: {age:?}");
}

/// While an issuer has no keys, its retries back off (1 s, 2 s, 4 s, ...); a token that arrives
/// meanwhile fetches them at once instead of getting 401 until the next retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_issuer_has_no_keys_yet_fetches_them_at_once() {
    let idp = FakeIdp::start(Behavior::Status(503));
    let policies = policy_dir("https://late.test", &idp.url("/certs"));
    let server = Server::start(&[policies.path()]);
    let errors = r#"portcullis_jwks_fetches_total{issuer="https://late.test",result="error"}"#;
    // Three failures: the start-up fetch and the retries after 1 s and 2 s; the next is 4 s away.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric(errors).is_none_or(|failures| failures < 3.0) {
        assert!(Instant::now() < deadline, "the IdP was never retried");
        std::thread::sleep(Duration::from_millis(50));
    }
    idp.set(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    assert_eq!(status_of(server.grpc, &token("https://late.test")).await, 200);
}
