//! API keys of bot accounts through the real binary and both doors: allowed by principal and scope, unknown, expired, rotated, changed at runtime, mixed with bearer tokens, the key's header stripped, and no key in the log.

#![expect(clippy::expect_used, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use forge::{RSA, jwks, public_jwk, sign, unix_now};
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::{CheckBuilder, Server, header_in, http_request, proxy_answer};

/// ci-bot's key, and the one that replaces it (both valid while the rotation lasts).
const CI_KEY: &str = "pk_ci_Z3Vlc3MgYWdhaW4gYm90";
const CI_NEXT_KEY: &str = "pk_ci_bmV4dCByb3RhdGlvbiBrZXk";
/// reader-bot's key: it may read, not deploy.
const READER_KEY: &str = "pk_reader_cmVhZCBvbmx5IGtleQ";
/// old-bot's key, expired long ago.
const EXPIRED_KEY: &str = "pk_old_ZXhwaXJlZCBsb25nIGFnbw";
/// A key no file names.
const UNKNOWN_KEY: &str = "pk_ci_dW5rbm93biB0byBhbGw";
/// A key added to the files while the server runs.
const LATE_KEY: &str = "pk_late_YWRkZWQgd2hpbGUgcnVubmluZw";

const TOKEN_ISSUER: &str = "https://people.test";

fn sha256_hex(key: &str) -> String {
    digest(&SHA256, key.as_bytes()).as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The key file: ci-bot with two keys, reader-bot, old-bot (expired), and `extra` entries.
fn key_file(extra: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        r#"# Bot accounts of the platform team.
keys:
- sha256: {ci}
  principal: ci-bot
  claims: {{owner: platform, scope: [svc-a:read, svc-a:write], roles: [deployer]}}
- sha256: {ci_next}
  principal: ci-bot
  expires: 2099-12-31T23:59:59Z
  claims: {{owner: platform, scope: [svc-a:read, svc-a:write], roles: [deployer]}}
- sha256: {reader}
  principal: reader-bot
  claims: {{owner: analytics, scope: "svc-a:read"}}
- sha256: {expired}
  principal: old-bot
  expires: 2020-01-01T00:00:00Z
  claims: {{scope: [svc-a:read, svc-a:write]}}
"#,
        ci = sha256_hex(CI_KEY),
        ci_next = sha256_hex(CI_NEXT_KEY),
        reader = sha256_hex(READER_KEY),
        expired = sha256_hex(EXPIRED_KEY),
    );
    for (key, principal) in extra {
        yaml.push_str(&format!(
            "- sha256: {}\n  principal: {principal}\n  claims: {{scope: [svc-a:read]}}\n",
            sha256_hex(key)
        ));
    }
    yaml
}

/// Namespace `bots` has no RequestAuthentication: `/deploy` takes a bot with the `svc-a:write`
/// scope, `/read` any bot. Namespace `mixed` verifies bearer tokens too and lets in any caller.
fn policies() -> String {
    let keys = jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))]);
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: bots, namespace: bots}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["apikeys/*"]}}}}]
    to: [{{operation: {{paths: ["/deploy"]}}}}]
    when: [{{key: "request.auth.claims[scope]", values: ["svc-a:write"]}}]
  - from: [{{source: {{requestPrincipals: ["apikeys/*"]}}}}]
    to: [{{operation: {{paths: ["/read"]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: people, namespace: mixed}}
spec:
  jwtRules:
  - issuer: {TOKEN_ISSUER}
    jwks: '{keys}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: anyone-known, namespace: mixed}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
"#
    )
}

/// The policies and key files of one server, kept while it runs.
struct Setup {
    policies: tempfile::TempDir,
    keys: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let setup = Self { policies: support::policy_dir(&policies()), keys: tempfile::tempdir().expect("temp dir") };
        setup.write_keys(&key_file(&[]));
        setup
    }

    /// Replaces the key file whole.
    fn write_keys(&self, text: &str) {
        support::replace_file(&self.key_file(), text);
    }

    fn key_file(&self) -> std::path::PathBuf {
        self.keys.path().join("bots.yaml")
    }

    /// The server, its HTTP door in Envoy's mode, every decision logged at debug level.
    fn start(&self, log_format: &str) -> Server {
        Server::with_http_door(
            self.policies.path(),
            "envoy",
            &format!(
                "decision_log: all\nlog_level: debug\nlog_format: {log_format}\nreload_poll_interval_ms: 100\napi_keys:\n  files: [{}]\n",
                self.keys.path().display()
            ),
        )
    }
}

/// What a proxy makes of one check: the status, the body of a refusal, and the headers it is
/// told to strip from an allowed request.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
    stripped: Vec<String>,
}

/// One GET of `path` for a workload of `namespace` through the gRPC door.
async fn grpc(server: &Server, namespace: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut check = CheckBuilder::new("GET", path).namespace(namespace);
    for (name, value) in headers {
        check = check.header(name, value);
    }
    let response = server.check(check.build()).await;
    let (status, body) = proxy_answer(&response);
    let stripped = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok.headers_to_remove.clone(),
        _ => Vec::new(),
    };
    Answer { status, body, stripped }
}

/// The same through the HTTP door.
fn http(server: &Server, namespace: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let context = format!("namespace={namespace}");
    let mut all = vec![("x-portcullis-context", context.as_str())];
    all.extend_from_slice(headers);
    let (status, head, body) = http_request(server.http, "GET", path, &all);
    let stripped = header_in(&head, "x-envoy-auth-headers-to-remove")
        .map(|names| names.split(',').map(|name| name.trim().to_string()).collect())
        .unwrap_or_default();
    Answer { status, body: if status == 200 { String::new() } else { body }, stripped }
}

/// Asks both doors, and expects the same answer from each.
async fn both_doors(server: &Server, namespace: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let through_grpc = grpc(server, namespace, path, headers).await;
    let through_http = http(server, namespace, path, headers);
    assert_eq!(through_grpc, through_http, "the two doors disagree on {path} with {headers:?}");
    through_grpc
}

/// Calls `condition` until it holds; fails the test after a generous hang guard.
async fn poll_until<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn allowed(stripped: &[&str]) -> Answer {
    Answer { status: 200, body: String::new(), stripped: stripped.iter().map(ToString::to_string).collect() }
}

fn refused(status: u16, body: &str) -> Answer {
    Answer { status, body: body.into(), stripped: Vec::new() }
}

/// One row of the bot table: the path, the headers that carry the key, and the answer.
type BotRow = (&'static str, Vec<(&'static str, String)>, Answer);

/// Every row of the bot table.
fn bot_rows() -> Vec<BotRow> {
    let key = |key: &str| vec![("x-api-key", key.to_string())];
    vec![
        ("/deploy", key(CI_KEY), allowed(&["x-api-key"])),
        ("/deploy", vec![("authorization", format!("APIKey {CI_KEY}"))], allowed(&["authorization"])),
        ("/deploy", key(CI_NEXT_KEY), allowed(&["x-api-key"])),
        ("/read", key(READER_KEY), allowed(&["x-api-key"])),
        ("/deploy", key(READER_KEY), refused(403, "RBAC: access denied")),
        ("/read", key(EXPIRED_KEY), refused(401, "API key is expired")),
        ("/read", key(UNKNOWN_KEY), refused(401, "API key is not valid")),
        ("/read", key(""), refused(401, "API key is not valid")),
        ("/read", Vec::new(), refused(403, "RBAC: access denied")),
    ]
}

async fn send_bot_rows(server: &Server) {
    for (path, headers, expected) in bot_rows() {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let answer = both_doors(server, "bots", path, &headers).await;
        assert_eq!(answer, expected, "{path} with {headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_keys_are_judged_by_principal_scope_and_expiry_through_both_doors_and_their_header_is_stripped() {
    let setup = Setup::new();
    let server = setup.start("text");
    send_bot_rows(&server).await;
    let decided = server.wait_for_log_line(&["Decided", "apikeys/ci-bot", "allow"]);
    assert!(decided.contains("/deploy"), "{decided}");
    assert_eq!(server.metric(r#"portcullis_api_keys_loaded"#), Some(4.0));
    assert_eq!(server.metric(r#"portcullis_api_key_checks_total{result="expired"}"#), Some(2.0));
    assert_eq!(server.metric(r#"portcullis_api_key_checks_total{result="known"}"#), Some(10.0));
    assert_eq!(server.metric(r#"portcullis_api_key_checks_total{result="unknown"}"#), Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_and_a_bearer_token_are_each_let_in_but_refused_together() {
    let setup = Setup::new();
    let server = setup.start("text");
    let claims = json!({"iss": TOKEN_ISSUER, "sub": "alice", "exp": unix_now() + 600});
    let bearer = format!("Bearer {}", sign(RSA, Algorithm::RS256, Some("rsa"), &claims));
    let person = both_doors(&server, "mixed", "/", &[("authorization", &bearer)]).await;
    assert_eq!(person, allowed(&["authorization"]));
    let bot = both_doors(&server, "mixed", "/", &[("x-api-key", CI_KEY)]).await;
    assert_eq!(bot, allowed(&["x-api-key"]));
    let both = both_doors(&server, "mixed", "/", &[("authorization", &bearer), ("x-api-key", CI_KEY)]).await;
    assert_eq!(both, refused(401, "Request carries more than one credential"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_changed_at_runtime_take_effect_and_a_broken_one_keeps_the_last_good_keys() {
    let setup = Setup::new();
    let server = setup.start("text");
    let status = |key: &'static str| {
        let server = &server;
        async move { grpc(server, "bots", "/read", &[("x-api-key", key)]).await.status }
    };
    assert_eq!((status(LATE_KEY).await, status(CI_KEY).await), (401, 200));

    // The rotation ends: ci-bot's first key goes, a new bot's key comes.
    let rotated = key_file(&[(LATE_KEY, "late-bot")]).replace(&sha256_hex(CI_KEY), &sha256_hex(UNKNOWN_KEY));
    setup.write_keys(&rotated);
    poll_until("the late key let in", || async { status(LATE_KEY).await == 200 }).await;
    assert_eq!((status(CI_KEY).await, status(CI_NEXT_KEY).await), (401, 200));
    assert_eq!(http(&server, "bots", "/read", &[("x-api-key", LATE_KEY)]).status, 200);

    // A key pasted where its digest belongs: refused, located, never logged; the last good keys stay.
    setup.write_keys(&format!("keys:\n- sha256: {CI_KEY}\n  principal: ci-bot\n"));
    let mut log = server.log_until(&["API key reload rejected"]);
    let rejected = log.last().expect("the awaited line");
    assert!(rejected.contains(&format!("{}:2", setup.key_file().display())), "{rejected}");
    assert_eq!((status(LATE_KEY).await, status(CI_NEXT_KEY).await), (200, 200));
    assert_eq!(server.metric(r#"portcullis_api_key_reloads_total{result="error"}"#), Some(1.0));
    log.extend(server.log_lines());
    assert!(log.iter().all(|line| !line.contains(CI_KEY)), "a key is in the log");
}

/// Every key every row sends: none may reach the log.
fn keys_sent() -> [&'static str; 5] {
    [CI_KEY, CI_NEXT_KEY, READER_KEY, EXPIRED_KEY, UNKNOWN_KEY]
}

async fn no_key_is_logged(log_format: &str) {
    let setup = Setup::new();
    let server = setup.start(log_format);
    send_bot_rows(&server).await;
    // A client that echoes its key as its request id.
    let echoed = both_doors(&server, "bots", "/read", &[("x-api-key", READER_KEY), ("x-request-id", READER_KEY)]).await;
    assert_eq!(echoed, allowed(&["x-api-key"]));
    let rows = bot_rows().len() * 2 + 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = server.log_lines();
        if log.iter().filter(|line| line.contains("Decided")).count() >= rows {
            break log;
        }
        assert!(Instant::now() < deadline, "not every decision was logged: {log:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for key in keys_sent() {
        let line = log.iter().find(|line| line.contains(key));
        assert!(line.is_none(), "the key {key} is in the log: {line:?}");
    }
    assert!(log.iter().any(|line| line.contains("DEBUG")), "the log has debug lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_reaches_the_text_log_from_either_door_or_any_decision() {
    no_key_is_logged("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_reaches_the_json_log_from_either_door_or_any_decision() {
    no_key_is_logged("json").await;
}

#[test]
fn a_broken_key_file_stops_the_start_with_its_line_and_without_the_key() {
    let setup = Setup::new();
    setup.write_keys(&format!(
        "keys:\n- sha256: {}\n  principal: ci-bot\n- sha256: {CI_KEY}\n  principal: x\n",
        sha256_hex(CI_KEY)
    ));
    let settings = support::config_file(&format!("api_keys:\n  files: [{}]\n", setup.keys.path().display()));
    let output = support::output_within(
        support::portcullis()
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(settings.path())
            .arg("--policies")
            .arg(setup.policies.path()),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{}:4: keys[1].sha256", setup.key_file().display())), "{stderr}");
    assert!(!stderr.contains(CI_KEY), "{stderr}");
    assert!(!stderr.contains("Listening"), "no door opened: {stderr}");
}
