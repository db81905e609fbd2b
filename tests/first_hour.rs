//! What a new user meets in the first hour: why an issuer has no keys, its metrics from start-up, a token that does not wait for the next retry, settings errors that name their variable, and the README's troubleshooting commands run against the problems they diagnose.

#![expect(clippy::expect_used, clippy::panic, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest as ProtoHttp, Request as ProtoRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use forge::{Behavior, FakeIdp, RSA, jwks, public_jwk, sign, unix_now};
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::{CheckBuilder, Server, http_get, portcullis, proxy_answer, repo_path};

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

// ---------------------------------------------------------------------------------------------
// The README's troubleshooting entries: each command and output they quote is read from the
// README, run against a policy set built to show the problem, and must name its cause.
// ---------------------------------------------------------------------------------------------

/// The inline code of the README's troubleshooting entry whose bold title starts with `title`,
/// title included; a span broken over lines is joined with one space.
fn troubleshooting_code(title: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README.md");
    let section = readme
        .split("\n## Troubleshooting\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a Troubleshooting section");
    let entry = section
        .split("\n- ")
        .find(|entry| entry.starts_with(&format!("**{title}")))
        .unwrap_or_else(|| panic!("the README has no troubleshooting entry `{title}`"));
    let entry = entry.split_whitespace().collect::<Vec<_>>().join(" ");
    entry.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The span of `code` that starts with `prefix`: the README must still quote it.
fn quoted<'c>(code: &'c [String], prefix: &str) -> &'c str {
    code.iter()
        .find(|span| span.starts_with(prefix))
        .unwrap_or_else(|| panic!("the README's entry no longer quotes `{prefix}…`: {code:?}"))
}

/// Runs a command the README quotes (`portcullis validate --policies DIR`), with `DIR`
/// replaced and `more` arguments appended: exit code, stdout, stderr.
fn run_quoted(command: &str, replacements: &[(&str, &Path)], more: &[&Path]) -> (Option<i32>, String, String) {
    let mut words = command.split_whitespace();
    assert_eq!(words.next(), Some("portcullis"), "`{command}` is not a portcullis command");
    let mut runnable = portcullis();
    for word in words {
        match replacements.iter().find(|(placeholder, _)| *placeholder == word) {
            Some((_, path)) => runnable.arg(path),
            None => runnable.arg(word),
        };
    }
    let output = runnable.args(more).output().expect("portcullis runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// The sum of the series of a metrics exposition that a PromQL selector the README quotes
/// (`name{label="value"}`) picks; `None` when it picks none.
fn selected_total(exposition: &str, selector: &str) -> Option<f64> {
    let (name, labels) = selector.split_once('{').map_or((selector, ""), |(name, labels)| (name, labels));
    let matchers: Vec<&str> = labels.trim_end_matches('}').split(',').filter(|matcher| !matcher.is_empty()).collect();
    let values: Vec<f64> = exposition
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            let picked = series_name == name && matchers.iter().all(|matcher| series_labels.contains(matcher));
            picked.then(|| value.parse().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// An ALLOW policy in namespace `jobs`: a request judged as another namespace has no policy.
const JOBS_ONLY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: readers, namespace: jobs}\nspec:\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n";

#[test]
fn the_troubleshooting_commands_for_everything_allowed_name_the_missing_policy_and_the_unknown_workload() {
    let code = troubleshooting_code("Everything is allowed.");
    let policies = tempfile::tempdir().expect("temp dir");
    write_file(policies.path(), "policies.yaml", JOBS_ONLY);
    let requests = tempfile::tempdir().expect("temp dir");
    // A namespace misspelled in the proxy's context extensions: no policy selects the workload.
    let misspelled = write_file(requests.path(), "misspelled.yaml", "path: /\ncontext_extensions: {namespace: job}\n");
    let unnamed = write_file(requests.path(), "unnamed.yaml", "path: /\n");
    let check = quoted(&code, "portcullis check");
    let policies_flag = [Path::new("--policies"), policies.path(), Path::new("--request")];
    let (exit, stdout, stderr) = run_quoted(check, &[], &[&policies_flag[..], &[&misspelled]].concat());
    assert_eq!(exit, Some(0), "{stderr}");
    let no_policies = quoted(&code, "\"reason\": ");
    assert!(stdout.contains(no_policies), "`{check}` does not show `{no_policies}`:\n{stdout}");
    let (exit, stdout, stderr) = run_quoted(check, &[], &[&policies_flag[..], &[&unnamed]].concat());
    assert_eq!(exit, Some(1), "{stderr}");
    let unknown_workload = quoted(&code, "unknown_workload");
    assert!(stdout.contains(&format!("\"reason\": \"{unknown_workload}\"")), "{stdout}");

    let server = Server::start(&[policies.path()]);
    let misspelled = CheckBuilder::new("GET", "/").namespace("job").build();
    let unnamed = CheckBuilder::new("GET", "/").build();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(runtime.block_on(server.check(misspelled)).status.map(|status| status.code), Some(0));
    assert_eq!(runtime.block_on(server.check(unnamed)).status.map(|status| status.code), Some(7));
    let (_, metrics) = http_get(server.admin, "/metrics");
    for selector in [quoted(&code, "portcullis_checks_total"), quoted(&code, "portcullis_unidentified_workload")] {
        assert_eq!(selected_total(&metrics, selector), Some(1.0), "`{selector}` in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_troubleshooting_commands_for_a_jwks_fetch_failure_name_the_issuer_and_why() {
    let code = troubleshooting_code("401 `Jwks remote fetch is failed`.");
    let idp = FakeIdp::start(Behavior::Status(503));
    // No jwksUri: the keys are found through OIDC discovery, which answers 503.
    let issuer = idp.url("/realms/jobs");
    let policies = tempfile::tempdir().expect("temp dir");
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: first-hour}}\nspec:\n  jwtRules:\n  - issuer: {issuer}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: verified-only, namespace: first-hour}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]\n"
    );
    write_file(policies.path(), "policies.yaml", &yaml);
    let settings = support::config_file("jwks_ready_timeout_secs: 1\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));

    let check = CheckBuilder::new("GET", "/").namespace("first-hour").bearer(&token(&issuer)).build();
    let (status, body) = proxy_answer(&server.check(check).await);
    assert_eq!((status, body.as_str()), (401, quoted(&code, "Jwks remote fetch is failed")));
    let (_, ready) = http_get(server.admin, quoted(&code, "/readyz"));
    assert!(ready.contains(&issuer), "`/readyz` does not name the issuer: {ready}");
    let warning = server.wait_for_log_line(&["WARN", "JWKS fetch failed", &issuer]);
    assert!(warning.contains("status 503"), "the warning does not say why: {warning}");
    let (_, metrics) = http_get(server.admin, "/metrics");
    let errors = quoted(&code, "portcullis_jwks_fetches_total");
    assert!(selected_total(&metrics, errors).is_some_and(|count| count >= 1.0), "`{errors}` in:\n{metrics}");
    let discovery = quoted(&code, "ISSUER/").replace("ISSUER", &issuer);
    assert!(idp.paths().iter().any(|path| idp.url(path) == discovery), "{discovery} not asked: {:?}", idp.paths());
}

#[test]
fn the_troubleshooting_commands_for_a_policy_that_does_not_apply_show_errors_skips_and_the_matched_rule() {
    let code = troubleshooting_code("My policy does not apply.");
    let policies = tempfile::tempdir().expect("temp dir");
    let selected = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: web-only, namespace: jobs}\nspec:\n  selector:\n    matchLabels: {app: web}\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n";
    let mistyped = selected.replace("methods:", "method:");
    let peer = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: jobs}\nspec: {mtls: {mode: STRICT}}\n";
    let file = write_file(policies.path(), "policies.yaml", &format!("{mistyped}{peer}"));
    let validate = quoted(&code, "portcullis validate");
    let (exit, _, stderr) = run_quoted(validate, &[("DIR", policies.path())], &[]);
    assert_eq!(exit, Some(1), "{stderr}");
    let located = format!("{}:8: unknown field `method`", file.display());
    assert!(stderr.contains(&located), "`{validate}` does not show `{located}`:\n{stderr}");
    write_file(policies.path(), "policies.yaml", &format!("{selected}{peer}"));
    let (exit, _, stderr) = run_quoted(validate, &[("DIR", policies.path())], &[]);
    assert_eq!(exit, Some(0), "{stderr}");
    let skipped =
        format!("{}:9: warning: skipped `security.istio.io/v1/PeerAuthentication`: mutual TLS", file.display());
    assert!(stderr.contains(&skipped), "`{validate}` does not show `{skipped}`:\n{stderr}");

    // The selector applies the policy to the workload labelled app=web alone.
    let requests = tempfile::tempdir().expect("temp dir");
    let web = write_file(requests.path(), "web.yaml", "path: /\ncontext_extensions: {namespace: jobs, app: web}\n");
    let api = write_file(requests.path(), "api.yaml", "path: /\ncontext_extensions: {namespace: jobs, app: api}\n");
    let shape = quoted(&code, "\"policy\": ");
    let matched = shape.replace("NS", "jobs").replace("NAME", "web-only").replace("[N]", "[0]");
    let check = [Path::new("check"), Path::new("--policies"), policies.path(), Path::new("--request")];
    assert_eq!(quoted(&code, "check"), "check");
    let (exit, stdout, stderr) = run_quoted("portcullis", &[], &[&check[..], &[&web]].concat());
    assert_eq!(exit, Some(0), "{stderr}");
    assert!(stdout.contains(&matched), "`check` does not show `{matched}`:\n{stdout}");
    let (_, stdout, _) = run_quoted("portcullis", &[], &[&check[..], &[&api]].concat());
    assert!(stdout.contains("\"reason\": \"no_policies\""), "{stdout}");
}
