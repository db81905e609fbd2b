//! Faults: an IdP down at start, slow or failing later; clock jumps; a panic inside a check; policy files unparsable or emptied at runtime.

#![expect(clippy::expect_used, clippy::indexing_slicing, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use forge::{Behavior, FakeIdp, RSA, claims_of, jwks, public_jwk, remote_issuers_in, sign};
use jsonwebtoken::Algorithm;
use portcullis::config::load::load_policy_text;
use portcullis::core::HttpRequest;
use portcullis::core::authn::{self, Authentication, AuthnContext, JwtRule, NoRemoteKeys};
use portcullis::core::jwt::JwtError;
use portcullis::doors::denial::Denial;
use portcullis::identity::token_cache::{TokenKey, VerifiedTokenCache};
use portcullis::telemetry::Metrics;
use serde_json::json;
use support::{
    CheckBuilder, Server, check_at, config_file, eventually, http_get, paths_policy, policy_dir, proxy_answer,
};

/// A GET of `path` for the workload in namespace `faults`, with `token` as its bearer.
fn check_request(path: &str, token: Option<&str>) -> CheckRequest {
    let check = CheckBuilder::new("GET", path).namespace("faults");
    match token {
        Some(token) => check.bearer(token),
        None => check,
    }
    .build()
}

async fn ask(server: &Server, path: &str, token: Option<&str>) -> (u16, String) {
    ask_at(server.grpc, path, token).await
}

/// Waits until `count` fetches of `issuer`'s keys ended with `result`.
async fn wait_for_jwks_fetches(server: &Server, issuer: &str, result: &str, count: f64) {
    let why = format!("fetch {count} of {issuer} never ended `{result}`");
    eventually(&why, async || jwks_fetches(server, issuer, result) >= count).await;
}

/// One Check; a generous deadline guards against a hang (it fails the test, it measures nothing).
async fn ask_at(grpc: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let check = check_at(grpc, check_request(path, token));
    let response = tokio::time::timeout(Duration::from_secs(30), check).await.expect("the Check answers within 30 s");
    proxy_answer(&response)
}

/// `portcullis_jwks_fetches_total` for `issuer` and `result`: how many fetches ended so (0 when
/// none did yet).
fn jwks_fetches(server: &Server, issuer: &str, result: &str) -> f64 {
    server.metric(&format!("portcullis_jwks_fetches_total{{issuer=\"{issuer}\",result=\"{result}\"}}")).unwrap_or(0.0)
}

/// A loopback address where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}/certs")
}

const JWKS_FETCH_FAILED: &str = "Jwks remote fetch is failed";
const NO_KEY: &str = "Jwks doesn't have key to match kid or alg from Jwt";

/// One IdP down at start: the server still becomes ready, `/readyz` names that issuer only, its
/// tokens get 401 `Jwks remote fetch is failed`, and the other remote issuer's tokens work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_down_at_start_degrades_only_its_own_issuer() {
    let up = FakeIdp::start(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    let policies = policy_dir(&remote_issuers_in(
        "faults",
        &[("https://up.test", up.url("/certs")), ("https://down.test", closed_port_url())],
    ));
    // Readiness may wait an hour for keys: the server is ready at once only because the down
    // IdP's first fetch failed (Server::start gives up after seconds).
    let config = config_file("jwks_ready_timeout_secs: 3600\n");
    let server = Server::start_with(&[policies.path()], Some(config.path()));
    assert!(jwks_fetches(&server, "https://down.test", "error") >= 1.0, "ready before the first fetch failed");
    let (status, body) = http_get(server.admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("no keys for issuer https://down.test"), "{body}");
    assert!(!body.contains("https://up.test"), "{body}");

    let down_token = sign(RSA, Algorithm::RS256, Some("rsa"), &claims_of("https://down.test"));
    let up_token = sign(RSA, Algorithm::RS256, Some("rsa"), &claims_of("https://up.test"));
    let (status, body) = ask(&server, "/", Some(&down_token)).await;
    assert_eq!((status, body.as_str()), (401, JWKS_FETCH_FAILED));
    assert_eq!(ask(&server, "/", Some(&up_token)).await, (200, String::new()));
    assert_eq!(ask(&server, "/", None).await.0, 403, "anonymous callers are still judged by the policy");
}

/// An IdP that turns slow (or down) after start: tokens with known kids keep working on the
/// cached keys, and a token with an unknown kid waits for the refetch at most
/// `jwks_refetch_wait_ms`, also when many arrive at once: every Check returns while the IdP's
/// slow answer is still pending. A refetch the IdP answers with 503 keeps the last good keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_idp_never_holds_a_check_past_the_bound() {
    const ISSUER: &str = "https://idp.test";
    let idp = FakeIdp::start(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    let policies = policy_dir(&remote_issuers_in("faults", &[(ISSUER, idp.url("/certs"))]));
    let config =
        config_file("jwks_refetch_wait_ms: 300\njwks_min_refetch_interval_secs: 0\njwks_fetch_timeout_ms: 60000\n");
    let server = Server::start_with(&[policies.path()], Some(config.path()));
    let known = sign(RSA, Algorithm::RS256, Some("rsa"), &claims_of(ISSUER));
    let unknown = sign(RSA, Algorithm::RS256, Some("rotated"), &claims_of(ISSUER));
    assert_eq!(ask(&server, "/", Some(&known)).await, (200, String::new()));
    assert_eq!(jwks_fetches(&server, ISSUER, "ok"), 1.0, "the start-up fetch");

    let requests_before = idp.paths().len();
    idp.set(Behavior::Slow(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))]), Duration::from_secs(5)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (grpc, unknown) = (server.grpc, unknown.clone());
        tasks.spawn(async move { ask_at(grpc, "/", Some(&unknown)).await });
    }
    while let Some(joined) = tasks.join_next().await {
        let (status, body) = joined.expect("task");
        assert_eq!((status, body.as_str()), (401, NO_KEY));
    }
    // While that refetch hangs, tokens the cached keys verify are not held at all.
    assert_eq!(ask(&server, "/", Some(&known)).await.0, 200);
    assert_eq!(
        jwks_fetches(&server, ISSUER, "ok"),
        1.0,
        "every Check above returned while the IdP's slow answer was still pending"
    );
    assert_eq!(idp.paths().len(), requests_before + 1, "twenty unknown kids share one refetch");

    // Once the slow answer is in, the next refetch meets a 503.
    wait_for_jwks_fetches(&server, ISSUER, "ok", 2.0).await;
    idp.set(Behavior::Status(503));
    assert_eq!(ask(&server, "/", Some(&unknown)).await, (401, NO_KEY.to_string()));
    server.wait_for_log_line(&["JWKS fetch failed", ISSUER, "status 503"]);
    assert_eq!(idp.paths().len(), requests_before + 2, "the 503 answered a refetch of its own");
    assert_eq!(jwks_fetches(&server, ISSUER, "error"), 1.0, "the 503 was received");
    assert_eq!(ask(&server, "/", Some(&known)).await.0, 200, "the last good keys stay while the IdP fails");
}

/// An IdP slow at start: readiness waits at most `jwks_ready_timeout_secs`, and until the keys
/// arrive the issuer's tokens get 401 once their prompt fetch has been waited for
/// `jwks_refetch_wait_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_slow_at_start_holds_neither_readiness_nor_checks() {
    let idp = FakeIdp::start(Behavior::Slow(
        jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))]),
        Duration::from_secs(30),
    ));
    let policies = policy_dir(&remote_issuers_in("faults", &[("https://idp.test", idp.url("/certs"))]));
    let config = config_file("jwks_ready_timeout_secs: 1\njwks_fetch_timeout_ms: 60000\njwks_refetch_wait_ms: 100\n");
    let server = Server::start_with(&[policies.path()], Some(config.path()));
    let token = sign(RSA, Algorithm::RS256, Some("rsa"), &claims_of("https://idp.test"));
    let (status, body) = ask(&server, "/", Some(&token)).await;
    assert_eq!((status, body.as_str()), (401, JWKS_FETCH_FAILED));
    // Readiness and the Check came while the IdP's answers were still pending: the start-up
    // fetch, and the prompt fetch the keyless issuer's token asked for (neither has ended).
    let asked = idp.paths();
    assert!(
        !asked.is_empty() && asked.iter().all(|path| path == "/certs"),
        "the start-up fetch was asked for: {asked:?}"
    );
    assert_eq!(jwks_fetches(&server, "https://idp.test", "ok"), 0.0, "ready before any key came");
    assert_eq!(jwks_fetches(&server, "https://idp.test", "error"), 0.0, "the start-up fetch ended early");
}

// ---------------------------------------------------------------------------------------------
// The clock is an input of the core.
// ---------------------------------------------------------------------------------------------

const T: u64 = 1_800_000_000;
const ISSUER: &str = "https://clock.test";

fn clock_rule() -> Arc<JwtRule> {
    let keys = jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))]);
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r, namespace: n}}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{keys}'\n"
    );
    let loaded = load_policy_text("clock.yaml", &yaml).expect("valid");
    loaded.authn[0].rules[0].clone()
}

fn judge(
    rule: &Arc<JwtRule>,
    token: &str,
    now: u64,
    skew: u64,
    cache: Option<&VerifiedTokenCache>,
) -> Result<(), JwtError> {
    let authorization = format!("Bearer {token}");
    let http =
        HttpRequest { path: "/", headers: vec![("authorization", authorization.as_str())], ..HttpRequest::default() };
    let context = AuthnContext { keys: &NoRemoteKeys, now, clock_skew_secs: skew, max_token_bytes: 8192 };
    let authentication = match (cache, authn::find_credentials(&[rule], &http)) {
        (Some(cache), Some(credentials)) => {
            credentials.authenticate_with(|credential| cache.authenticate(credential, &context))
        }
        _ => authn::authenticate(&[rule], &http, &context),
    };
    match authentication {
        Authentication::Verified { .. }
        | Authentication::Session { .. }
        | Authentication::ApiKey { .. }
        | Authentication::Introspected { .. } => Ok(()),
        Authentication::Anonymous => Err(JwtError::BadFormat),
        Authentication::Failed { error, .. } => Err(error),
    }
}

/// `exp` and `nbf` are judged at the `now` the check is given, with `clock_skew_secs` of
/// tolerance on each side: the exact edges of the window.
#[test]
fn token_lifetimes_are_judged_at_the_given_clock_with_skew() {
    let rule = clock_rule();
    let token = sign(RSA, Algorithm::RS256, Some("rsa"), &json!({"iss": ISSUER, "sub": "a", "nbf": T, "exp": T + 300}));
    let cases: [(u64, u64, Result<(), JwtError>); 10] = [
        (T + 100, 60, Ok(())),
        (T + 359, 60, Ok(())),
        (T + 360, 60, Err(JwtError::Expired)),
        (T - 60, 60, Ok(())),
        (T - 61, 60, Err(JwtError::NotYetValid)),
        (T + 299, 0, Ok(())),
        (T + 300, 0, Err(JwtError::Expired)),
        (T, 0, Ok(())),
        (T - 1, 0, Err(JwtError::NotYetValid)),
        (u64::MAX, 60, Err(JwtError::Expired)),
    ];
    for (now, skew, expected) in cases {
        assert_eq!(
            judge(&rule, &token, now, skew, None),
            expected,
            "now T{:+}, skew {skew}",
            i128::from(now) - i128::from(T)
        );
    }
}

/// The clock jumps forward past `exp` and back before `nbf` while the token sits in the
/// verified-token cache: every hit is judged again at the new time.
#[test]
fn clock_jumps_are_judged_again_on_cache_hits() {
    let rule = clock_rule();
    let cache = VerifiedTokenCache::new(100, Arc::new(Metrics::new()));
    let token = sign(RSA, Algorithm::RS256, Some("rsa"), &json!({"iss": ISSUER, "sub": "a", "nbf": T, "exp": T + 300}));
    assert_eq!(judge(&rule, &token, T + 10, 60, Some(&cache)), Ok(()), "verified and remembered");
    assert_eq!(cache.get(&TokenKey::new(&token)).map(|hit| hit.expires_at()), Some(Some((T + 300) as f64)));
    assert_eq!(judge(&rule, &token, T + 3600, 60, Some(&cache)), Err(JwtError::Expired), "a jump forward");
    assert_eq!(judge(&rule, &token, T + 10, 60, Some(&cache)), Ok(()), "and back");
    assert_eq!(judge(&rule, &token, T - 3600, 60, Some(&cache)), Err(JwtError::NotYetValid), "a jump back before nbf");
}

/// A panic inside a Check fails closed: the request is denied with `internal_error`, and the
/// same policy set goes on deciding the next request.
#[test]
fn a_panic_inside_a_check_is_a_deny() {
    let keys = jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))]);
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r, namespace: n}}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{keys}'\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: anyone, namespace: n}}\nspec:\n  rules: [{{}}]\n"
    );
    let loaded = load_policy_text("panic.yaml", &yaml).expect("valid");
    let snapshot = portcullis::core::Snapshot::new(
        loaded.policies,
        loaded.authn,
        portcullis::core::workload::WorkloadTable::default(),
        portcullis::core::EngineOptions::default(),
        "istio-system",
    );
    let token = sign(RSA, Algorithm::RS256, Some("rsa"), &json!({"iss": ISSUER, "sub": "a", "exp": T + 300}));
    let authorization = format!("Bearer {token}");
    let extensions = HashMap::from([("namespace".to_string(), "n".to_string())]);
    let request = portcullis::core::Request {
        http: Some(HttpRequest {
            method: "GET",
            path: "/",
            headers: vec![("authorization", authorization.as_str())],
            ..HttpRequest::default()
        }),
        context_extensions: portcullis::core::StrMap::from(&extensions),
        ..portcullis::core::Request::default()
    };
    // A resolver that panics on every token: a bug inside the check.
    let decision = snapshot.check_with(&request, |_| panic!("a bug inside the check"));
    assert_eq!(decision.reason, portcullis::core::Reason::InternalError);
    assert!(!decision.is_allow());
    let denial = Denial::refusing(&decision);
    assert_eq!((denial.status, denial.body), (403, "RBAC: access denied"));
    let working = AuthnContext { keys: &NoRemoteKeys, now: T, clock_skew_secs: 60, max_token_bytes: 8192 };
    assert!(snapshot.check(&request, &working).is_allow(), "the next check is decided as usual");
}

// ---------------------------------------------------------------------------------------------
// The policy directory at runtime.
// ---------------------------------------------------------------------------------------------

/// A DENY of `/admin` and below in namespace `faults`.
fn deny_admin() -> String {
    paths_policy("faults", "deny-admin", "DENY", &["/admin", "/admin/*"])
}

/// Waits until the server has tried `attempts` reloads in all (ok or error).
async fn wait_for_reloads(server: &Server, attempts: f64) {
    let reloads = |result: &str| server.metric(&format!("portcullis_reloads_total{{result=\"{result}\"}}"));
    let why = format!("no reload attempt {attempts}");
    eventually(&why, async || reloads("ok").unwrap_or(0.0) + reloads("error").unwrap_or(0.0) >= attempts).await;
}

/// Starts a server on a policy directory holding [`deny_admin`], polling it every 200 ms.
fn server_on_policy_directory() -> (tempfile::TempDir, std::path::PathBuf, Server, tempfile::NamedTempFile) {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("policies");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("policies.yaml"), deny_admin()).expect("write");
    let config = config_file("reload_poll_interval_ms: 200\n");
    let server = Server::start_with(&[Path::new(&dir)], Some(config.path()));
    (root, dir, server, config)
}

/// Policy files that stop parsing at runtime (broken YAML, a wrong type): the last good set
/// stays and keeps deciding; a valid set afterwards is picked up. (A set that parses but does
/// not compile, and a removed directory, are `tests/reload.rs`'s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_policy_files_at_runtime_keep_the_last_good_set() {
    let (_root, dir, server, _config) = server_on_policy_directory();
    assert_eq!(ask(&server, "/admin", None).await.0, 403);
    assert_eq!(ask(&server, "/public", None).await.0, 200);

    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let steps: [Step; 2] = [
        ("corrupted", Box::new(|| support::replace_file(&dir.join("policies.yaml"), "spec: [\n  {oops"))),
        (
            "a wrong type",
            Box::new(|| {
                support::replace_file(
                    &dir.join("policies.yaml"),
                    &deny_admin().replace("action: DENY", "action: [DENY]"),
                )
            }),
        ),
    ];
    let mut failures = Vec::new();
    let mut attempts = 0.0;
    for (name, break_it) in &steps {
        break_it();
        attempts += 1.0;
        wait_for_reloads(&server, attempts).await;
        if ask(&server, "/admin", None).await.0 != 403 {
            failures.push(format!("{name}: /admin is no longer denied"));
        }
        if server.metric("portcullis_policy_generation") != Some(1.0) {
            failures.push(format!("{name}: a new policy set went live"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(server.metric("portcullis_reloads_total{result=\"error\"}"), Some(attempts), "each refusal is counted");
    support::replace_file(
        &dir.join("policies.yaml"),
        &deny_admin().replace("\"/admin/*\"", "\"/admin/*\", \"/secret\""),
    );
    wait_for_reloads(&server, attempts + 1.0).await;
    assert_eq!(ask(&server, "/secret", None).await.0, 403, "the valid set went live");
    assert_eq!(server.metric("portcullis_policy_generation"), Some(2.0));
}

/// A policy directory that is suddenly empty (a ConfigMap mid-update, a half-done sync, a wrong
/// mount) must not turn every workload's policies off: the last good set stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn an_emptied_policy_directory_keeps_the_last_good_set() {
    let (_root, dir, server, _config) = server_on_policy_directory();
    assert_eq!(ask(&server, "/admin", None).await.0, 403);
    std::fs::remove_file(dir.join("policies.yaml")).expect("rm");
    wait_for_reloads(&server, 1.0).await;
    assert_eq!(ask(&server, "/admin", None).await.0, 403, "/admin is no longer denied");
    assert_eq!(server.metric("portcullis_policy_generation"), Some(1.0), "an empty set went live");
}
