//! The real server over real sockets: Check with a tonic client on Envoy's protos and with raw bytes, gRPC health, admin endpoints, shutdown.

#![expect(clippy::expect_used, clippy::panic, reason = "test helpers: a failed step fails the test")]

mod support;

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message;
use prost::bytes::BufMut;
use support::{CheckBuilder, Server, http_get, metadata_field, repo_path};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn job_service_request(method: &str, path: &str, source_principal: &str) -> CheckRequest {
    CheckBuilder::new(method, path)
        .host("jobs.example.com")
        .header(":method", method)
        .header(":path", path)
        .header(":authority", "jobs.example.com")
        .namespace("job-service")
        .context("app", "job-service")
        .source_address("10.1.2.3")
        .source_principal(source_principal)
        .build()
}

async fn check(server: &Server, request: CheckRequest) -> CheckResponse {
    server.check(request).await
}

fn denied(response: &CheckResponse) -> (i32, i32, String) {
    let code = response.status.as_ref().map_or(-1, |status| status.code);
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            (code, denied.status.as_ref().map_or(0, |status| status.code), denied.body.clone())
        }
        other => panic!("expected a denied response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_allows_and_denies_over_grpc_and_counts_in_metrics() {
    let server = Server::start(&[&repo_path("policies")]);

    let allowed = check(&server, job_service_request("GET", "/api/jobs?page=2", "")).await;
    assert_eq!(allowed.status.as_ref().map(|status| status.code), Some(0));
    assert!(matches!(allowed.http_response, Some(HttpResponse::OkResponse(_))));
    assert_eq!(metadata_field(&allowed, "policy").as_deref(), Some("ns[job-service]-policy[job-service]-rule[0]"));
    assert_eq!(metadata_field(&allowed, "decision").as_deref(), Some("allow"));

    let forbidden = check(&server, job_service_request("POST", "/api/jobs", "")).await;
    assert_eq!(denied(&forbidden), (7, 403, "RBAC: access denied".to_string()));
    assert_eq!(metadata_field(&forbidden, "reason").as_deref(), Some("no_allow_match"));

    let traversal = check(&server, job_service_request("GET", "/api/jobs/%2e%2e/%2e%2e/debug/vars", "")).await;
    assert_eq!(denied(&traversal), (7, 403, "RBAC: access denied".to_string()));
    assert_eq!(
        metadata_field(&traversal, "policy").as_deref(),
        Some("ns[istio-system]-policy[deny-debug-endpoints]-rule[0]")
    );

    let bad_path = check(&server, job_service_request("GET", "/api/jobs/%00", "")).await;
    assert_eq!(denied(&bad_path), (3, 400, "Bad Request".to_string()));

    let empty = check(&server, CheckRequest::default()).await;
    assert_eq!(denied(&empty).0, 7, "a check without attributes fails closed");

    let (status, metrics) = http_get(server.admin, "/metrics");
    assert_eq!(status, 200);
    for expected in [
        r#"portcullis_checks_total{door="grpc",decision="allow",reason="allowed_by_policy"} 1"#,
        r#"portcullis_checks_total{door="grpc",decision="deny",reason="no_allow_match"} 1"#,
        r#"portcullis_checks_total{door="grpc",decision="deny",reason="denied_by_policy"} 1"#,
        r#"portcullis_checks_total{door="grpc",decision="deny",reason="invalid_path"} 1"#,
        r#"portcullis_checks_total{door="grpc",decision="deny",reason="malformed_request"} 1"#,
        r#"portcullis_check_duration_seconds_count{door="grpc"} 5"#,
        "portcullis_policies_loaded 6",
        "portcullis_policy_generation 1",
    ] {
        assert!(metrics.lines().any(|line| line == expected), "missing `{expected}` in:\n{metrics}");
    }
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}

/// Sends a Check's bytes as they are, which Envoy's prost types could not always carry.
#[derive(Debug, Clone, Copy)]
struct RawCheckCodec;

impl Codec for RawCheckCodec {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for RawCheckCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, message: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&message);
        Ok(())
    }
}

impl Decoder for RawCheckCodec {
    type Item = CheckResponse;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<CheckResponse>, tonic::Status> {
        CheckResponse::decode(buf).map(Some).map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

async fn call_raw(server: &Server, path: &'static str, message: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc)).expect("valid endpoint");
    let mut grpc = tonic::client::Grpc::new(endpoint.connect().await.expect("connects"));
    grpc.ready().await.expect("ready");
    let path = PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(message), path, RawCheckCodec).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_with_a_string_that_is_not_utf8_is_denied_as_malformed_and_unknown_methods_are_unimplemented() {
    let server = Server::start(&[&repo_path("policies")]);
    let valid = job_service_request("GET", "/api/jobs?page=2", "").encode_to_vec();
    let allowed = call_raw(&server, CHECK_PATH, valid.clone()).await.expect("Check answers");
    assert_eq!(allowed.status.as_ref().map(|status| status.code), Some(0));

    // The first `jobs.example.com`, in the host or the `:authority` header, starts with 0xFF.
    let mut not_utf8 = valid.clone();
    let at = not_utf8.windows(16).position(|window| window == b"jobs.example.com").expect("the host is encoded");
    not_utf8[at] = 0xff;
    let malformed = call_raw(&server, CHECK_PATH, not_utf8).await.expect("Check answers, not a gRPC error");
    assert_eq!(denied(&malformed), (7, 403, "RBAC: access denied".to_string()));
    assert_eq!(metadata_field(&malformed, "reason").as_deref(), Some("malformed_request"));

    let truncated = call_raw(&server, CHECK_PATH, valid[..valid.len() - 1].to_vec()).await;
    assert_eq!(truncated.err().map(|status| status.code()), Some(tonic::Code::Internal), "as tonic-prost answers");
    let other_method = call_raw(&server, "/envoy.service.auth.v3.Authorization/Other", valid).await;
    assert_eq!(other_method.err().map(|status| status.code()), Some(tonic::Code::Unimplemented));

    let (_, metrics) = http_get(server.admin, "/metrics");
    for expected in [
        r#"portcullis_checks_total{door="grpc",decision="allow",reason="allowed_by_policy"} 1"#,
        r#"portcullis_checks_total{door="grpc",decision="deny",reason="malformed_request"} 1"#,
        r#"portcullis_check_duration_seconds_count{door="grpc"} 2"#,
    ] {
        assert!(metrics.lines().any(|line| line == expected), "missing `{expected}` in:\n{metrics}");
    }
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_admin_endpoints_report_serving_then_shutdown() {
    let server = Server::start(&[&repo_path("policies")]);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc)).expect("valid endpoint");
    let mut health = HealthClient::new(endpoint.connect().await.expect("connects"));
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.expect("health answers");
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32, "service `{service}`");
    }
    assert_eq!(http_get(server.admin, "/healthz").0, 200);
    assert_eq!(http_get(server.admin, "/readyz").0, 200);
    assert_eq!(http_get(server.admin, "/nope").0, 404);
    let log = server.log_lines().join("\n");
    assert!(log.contains("Loaded the policy set"), "log:\n{log}");
    assert_eq!(
        server.terminate_within(std::time::Duration::from_secs(30)).code(),
        Some(0),
        "SIGTERM ends the server cleanly"
    );
}

#[test]
fn an_invalid_policy_set_stops_start_up_before_any_port_is_bound() {
    let broken = tempfile::tempdir().expect("temp dir");
    let file = broken.path().join("broken.yaml");
    std::fs::write(&file, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: y}\nspec:\n  action: MAYBE\n")
        .expect("write");
    let output = support::output_within(
        support::portcullis()
            .args(["serve", "--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--policies"])
            .arg(&file),
        std::time::Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:5: authorization policy `y/x`: spec.action: unknown action `MAYBE`",
            file.display()
        )),
        "stderr:\n{stderr}"
    );
    assert!(!stderr.contains("Listening"), "no port may be bound:\n{stderr}");
}

#[test]
fn a_policy_path_that_is_not_a_regular_file_stops_start_up_before_any_port_is_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("pipe.yaml");
    support::make_fifo(&fifo);
    let zero = dir.path().join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    for (path, expected) in [(&fifo, "not a regular file (fifo)"), (&zero, "not a regular file (character device)")] {
        let mut serve = support::portcullis();
        serve.args(["serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
        serve.args(["--admin-listen", "127.0.0.1:0", "--policies"]).arg(path);
        let output = support::output_within(&mut serve, std::time::Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
        assert!(stderr.contains(&format!("{}: {expected}", path.display())), "stderr:\n{stderr}");
        assert!(!stderr.contains("Listening"), "no port may be bound:\n{stderr}");
    }
}

mod tokens {
    use super::*;
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    fn key() -> EncodingKey {
        EncodingKey::from_rsa_pem(&std::fs::read(repo_path("tests/keys/rsa-2048.pem")).expect("key")).expect("pem")
    }

    fn token(exp_offset: i64, username: &str) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let claims = serde_json::json!({"iss": "https://idp.test/realms/jobs", "sub": username, "exp": i64::try_from(now).expect("a time") + exp_offset,
                                        "preferred_username": username, "realm_access": {"roles": ["user"]}});
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &key()).expect("signs")
    }

    fn policies() -> tempfile::TempDir {
        let mut jwk = Jwk::from_encoding_key(&key(), Algorithm::RS256).expect("jwk");
        jwk.common.key_id = Some("k1".into());
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("json");
        let dir = tempfile::tempdir().expect("temp dir");
        let authn = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: test, namespace: job-service}}\nspec:\n  jwtRules:\n  - issuer: https://idp.test/realms/jobs\n    jwks: '{jwks}'\n    outputClaimToHeaders: [{{header: x-user, claim: preferred_username}}]\n"
        );
        std::fs::write(dir.path().join("authn.yaml"), authn).expect("write");
        std::fs::copy(repo_path("policies/job-board.yaml"), dir.path().join("job-board.yaml")).expect("copy");
        dir
    }

    fn with_token(mut request: CheckRequest, token: &str) -> CheckRequest {
        if let Some(http) = request.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
            http.headers.insert("authorization".into(), format!("Bearer {token}"));
        }
        request
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_authenticate_callers_over_grpc() {
        let dir = policies();
        let server = Server::start(&[dir.path()]);

        let alice = token(300, "alice");
        for _ in 0..2 {
            let allowed = check(&server, with_token(job_service_request("POST", "/api/jobs", ""), &alice)).await;
            let Some(HttpResponse::OkResponse(ok)) = &allowed.http_response else {
                panic!("expected allow: {allowed:?}")
            };
            let headers: Vec<(String, String)> = ok
                .headers
                .iter()
                .filter_map(|option| option.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            assert_eq!(headers, [("x-user".to_string(), "alice".to_string())]);
            assert_eq!(ok.headers_to_remove, ["authorization"]);
        }

        let expired =
            check(&server, with_token(job_service_request("GET", "/api/jobs?x=1", ""), &token(-3600, "bob"))).await;
        assert_eq!(denied(&expired), (16, 401, "Jwt is expired".to_string()));
        let Some(HttpResponse::DeniedResponse(denied_response)) = &expired.http_response else { panic!("denied") };
        let challenge = denied_response
            .headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .find(|h| h.key == "www-authenticate");
        assert_eq!(
            challenge.map(|h| h.value.as_str()),
            Some(r#"Bearer realm="http://jobs.example.com/api/jobs", error="invalid_token""#)
        );

        let garbage = check(&server, with_token(job_service_request("GET", "/api/jobs", ""), "not-a-token")).await;
        assert_eq!(
            denied(&garbage),
            (16, 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections".to_string())
        );

        let anonymous = check(&server, job_service_request("POST", "/api/jobs", "")).await;
        assert_eq!(denied(&anonymous), (7, 403, "RBAC: access denied".to_string()));

        let (_, metrics) = http_get(server.admin, "/metrics");
        for expected in [
            "portcullis_token_cache_hits_total 1",
            "portcullis_token_cache_misses_total 3",
            "portcullis_token_cache_entries 1",
            r#"portcullis_checks_total{door="grpc",decision="deny",reason="invalid_token"} 2"#,
        ] {
            assert!(metrics.lines().any(|line| line == expected), "missing `{expected}` in:\n{metrics}");
        }
        assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_dry_run_logs_denies_and_answers_allow() {
    let settings = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(settings.path(), "dry_run: true\ndecision_log: all\n").expect("write");
    let server = Server::start_with(&[&repo_path("policies")], Some(settings.path()));
    let mut request = job_service_request("POST", "/api/jobs", "");
    if let Some(http) = request.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.headers.insert("x-request-id".into(), "req-42".into());
    }
    let answered = check(&server, request).await;
    assert_eq!(answered.status.as_ref().map(|status| status.code), Some(0), "a dry run answers allow");
    assert_eq!(metadata_field(&answered, "reason").as_deref(), Some("no_allow_match"), "and reports the real reason");
    let (_, metrics) = http_get(server.admin, "/metrics");
    assert!(metrics.contains(r#"portcullis_checks_total{door="grpc",decision="deny",reason="no_allow_match"} 1"#));
    let line = server.wait_for_log_line(&["req-42"]);
    for field in
        ["decision=\"deny\"", "enforced=false", "reason=\"no_allow_match\"", "method=\"POST\"", "path=\"/api/jobs\""]
    {
        assert!(line.contains(field), "`{field}` missing from: {line}");
    }
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}
