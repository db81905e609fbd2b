//! Hot reload under load: good and bad policy sets swapped in a ConfigMap-shaped directory of real symlinks, SIGHUP, and graceful shutdown.

#![expect(clippy::expect_used, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use forge::{Behavior, FakeIdp, RSA, jwks, public_jwk, sign, unix_now};
use jsonwebtoken::Algorithm;
use support::{CheckBuilder, Server, eventually, grpc_client_at, http_get, make_fifo};
use tokio::sync::Mutex;

const ALLOW_X: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n";
const DENY_X: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n";
const GUARD_MISSPELLED: &str = "apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: guard, namespace: ns}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: ns}\n";
const BROKEN: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  action: NEVER\n";

/// A directory laid out as Kubernetes mounts a ConfigMap: `policy.yaml -> ..data/policy.yaml`,
/// `..data -> ..<version>`; an update writes a new version and swaps `..data` atomically.
struct ConfigMapDir {
    root: tempfile::TempDir,
    versions: usize,
}

impl ConfigMapDir {
    fn new(content: &str) -> Self {
        let mut dir = Self { root: tempfile::tempdir().expect("temp dir"), versions: 0 };
        dir.publish(content);
        std::os::unix::fs::symlink("..data/policy.yaml", dir.root.path().join("policy.yaml")).expect("symlink");
        dir
    }

    fn publish(&mut self, content: &str) {
        self.versions += 1;
        let version = format!("..2026_11_23_{}", self.versions);
        std::fs::create_dir(self.root.path().join(&version)).expect("version dir");
        std::fs::write(self.root.path().join(&version).join("policy.yaml"), content).expect("write");
        let staging = self.root.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staging).expect("symlink");
        std::fs::rename(&staging, self.root.path().join("..data")).expect("atomic swap");
    }

    fn path(&self) -> &Path {
        self.root.path()
    }
}

/// The server's default `reload_poll_interval_ms` (the README's configuration table).
const DEFAULT_POLL_MS: u64 = 2_000;

/// How long a server may take to exit on SIGTERM before the test fails (a hang guard).
const EXIT_BOUND: Duration = Duration::from_secs(30);

fn check_x() -> CheckRequest {
    check_x_with(HashMap::new())
}

/// A GET of `/x` for the workload in namespace `ns`, with `headers`.
fn check_x_with(headers: HashMap<String, String>) -> CheckRequest {
    CheckBuilder::new("GET", "/x").host("h").namespace("ns").headers(headers).build()
}

fn settings_file(poll_ms: u64) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), format!("reload_poll_interval_ms: {poll_ms}\n")).expect("write");
    file
}

/// Decisions observed by a stream of checks: `true` for allow, in order; and any failures, of
/// checks started before a signal and of checks started after it.
#[derive(Default)]
struct Observed {
    verdicts: Vec<bool>,
    failures: Vec<String>,
    failures_after_signal: Vec<String>,
}

/// Checks `/x` until `stop`; `signalled` is set just before a signal is sent, so each check
/// knows whether it started before it.
async fn stream_checks(
    address: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    signalled: Arc<AtomicBool>,
    observed: Arc<Mutex<Observed>>,
) {
    let mut client = grpc_client_at(address).await;
    while !stop.load(Ordering::Relaxed) {
        let after_signal = signalled.load(Ordering::SeqCst);
        let outcome = client.check(check_x()).await;
        let mut observed = observed.lock().await;
        match outcome {
            Ok(response) => {
                let code = response.into_inner().status.map_or(-1, |status| status.code);
                observed.verdicts.push(code == 0);
            }
            Err(status) if after_signal => observed.failures_after_signal.push(status.to_string()),
            Err(status) => observed.failures.push(status.to_string()),
        }
    }
}

/// Waits until `count` more checks than now were answered.
async fn wait_for_more_verdicts(observed: &Arc<Mutex<Observed>>, count: usize) {
    let target = observed.lock().await.verdicts.len() + count;
    let why = format!("{count} more checks were not answered");
    eventually(&why, async || observed.lock().await.verdicts.len() >= target).await;
}

/// Waits until the last answered check is `allow`.
async fn wait_for_verdict(observed: &Arc<Mutex<Observed>>, allow: bool, why: &str) {
    eventually(why, async || observed.lock().await.verdicts.last() == Some(&allow)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_sets_swap_in_under_load_and_a_bad_set_is_never_served() {
    let mut dir = ConfigMapDir::new(ALLOW_X);
    let settings = settings_file(100);
    let server = Server::start_with(&[dir.path()], Some(settings.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let signalled = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(stream_checks(server.grpc, stop.clone(), signalled, observed.clone()));
    wait_for_verdict(&observed, true, "the first set allows /x").await;

    dir.publish(BROKEN);
    wait_for_reload_errors(&server, 1.0).await;
    let before_good = observed.lock().await.verdicts.len();
    dir.publish(DENY_X);
    wait_for_verdict(&observed, false, "the second good set denies /x").await;
    wait_for_more_verdicts(&observed, 20).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");

    let observed = observed.lock().await;
    assert!(observed.failures.is_empty(), "checks failed during reloads: {:?}", observed.failures);
    let first_deny = observed.verdicts.iter().position(|allow| !allow).expect("a deny");
    assert!(first_deny >= before_good, "the broken set changed decisions");
    assert!(observed.verdicts[..first_deny].iter().all(|allow| *allow), "allow until the good swap");
    assert!(observed.verdicts[first_deny..].iter().all(|allow| !*allow), "deny from the good swap on");
    assert!(observed.verdicts.len() > 20, "only {} checks ran", observed.verdicts.len());
    assert_eq!(server.metric(r#"portcullis_reloads_total{result="ok"}"#), Some(1.0));
    assert_eq!(server.metric("portcullis_policy_generation"), Some(2.0));
    let log = server.log_lines().join("\n");
    assert!(log.contains("policy.yaml:5: authorization policy `ns/p`: spec.action: unknown action `NEVER`"), "{log}");
    assert_eq!(server.terminate_within(EXIT_BOUND).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_removed_directory_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("dir");
    std::fs::write(policies.join("p.yaml"), ALLOW_X).expect("write");
    let settings = settings_file(0);
    let server = Server::start_with(&[&policies], Some(settings.path()));
    // A witness on the same files, polling a little slower than the default: once it has picked
    // up two changes one after the other, more than a default interval has passed since the
    // first, so a server that ignored `0` would have reloaded by then.
    let witness_settings = settings_file(DEFAULT_POLL_MS + DEFAULT_POLL_MS / 4);
    let witness = Server::start_with(&[&policies], Some(witness_settings.path()));
    let mut client = server.grpc_client().await;
    let mut witness_client = witness.grpc_client().await;
    assert_eq!(verdict(&mut client).await, 0);

    std::fs::write(policies.join("p.yaml"), DENY_X).expect("write");
    wait_for_verdict_code(&mut witness_client, 7, "the witness never picked up the first change").await;
    std::fs::write(policies.join("p.yaml"), ALLOW_X).expect("write");
    wait_for_verdict_code(&mut witness_client, 0, "the witness never picked up the second change").await;
    std::fs::write(policies.join("p.yaml"), DENY_X).expect("write");
    assert_eq!(verdict(&mut client).await, 0, "no polling: no reload yet");
    assert_eq!(server.metric(r#"portcullis_reloads_total{result="ok"}"#).unwrap_or(0.0), 0.0, "no reload yet");
    drop(witness);
    server.signal("-HUP");
    wait_for_verdict_code(&mut client, 7, "SIGHUP did not reload").await;

    std::fs::remove_dir_all(&policies).expect("remove");
    server.signal("-HUP");
    wait_for_reload_errors(&server, 1.0).await;
    assert_eq!(verdict(&mut client).await, 7, "the last good set stays");
    assert_eq!(server.terminate_within(EXIT_BOUND).code(), Some(0));
}

/// A RequestAuthentication in `ns` whose keys come from `jwks_uri`.
fn remote_keys(jwks_uri: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: ns}}\nspec:\n  jwtRules:\n  - issuer: https://idp.test\n    jwksUri: {jwks_uri}\n"
    )
}

/// SIGTERM while checks stream and one Check is held (its token's unknown kid waits for a slow
/// IdP): the held Check and every check started before the signal are answered; only checks
/// started after it may fail, and only as never processed or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_check_and_exits_cleanly() {
    let idp = FakeIdp::start(Behavior::Serve(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])));
    let dir = ConfigMapDir::new(&format!("{ALLOW_X}---\n{}", remote_keys(&idp.url("/certs"))));
    let settings = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(settings.path(), "jwks_refetch_wait_ms: 3000\n").expect("write");
    let server = Server::start_with(&[dir.path()], Some(settings.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let streams: Vec<_> = (0..4)
        .map(|_| tokio::spawn(stream_checks(server.grpc, stop.clone(), signalled.clone(), observed.clone())))
        .collect();
    wait_for_verdict(&observed, true, "the set allows /x").await;

    idp.set(Behavior::Slow(jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))]), Duration::from_secs(30)));
    let fetches_before = idp.paths().len();
    let claims = serde_json::json!({"iss": "https://idp.test", "sub": "a", "exp": unix_now() + 600});
    let token = sign(RSA, Algorithm::RS256, Some("rotated"), &claims);
    let mut held_client = server.grpc_client().await;
    let headers = HashMap::from([("authorization".to_string(), format!("Bearer {token}"))]);
    let held = tokio::spawn(async move { held_client.check(check_x_with(headers)).await });
    eventually("the held Check never asked the IdP", async || idp.paths().len() > fetches_before).await;

    signalled.store(true, Ordering::SeqCst);
    let pid = server.pid();
    let status = tokio::task::spawn_blocking(move || server.terminate_within(EXIT_BOUND)).await.expect("join");
    stop.store(true, Ordering::Relaxed);
    for stream in streams {
        stream.await.expect("stream task");
    }
    assert_eq!(status.code(), Some(0), "pid {pid} exits 0 on SIGTERM");
    let held = held.await.expect("held task").expect("the Check in flight at SIGTERM is answered");
    assert_eq!(held.into_inner().status.map(|status| status.code), Some(16), "decided: 401 for the unknown kid");
    let observed = observed.lock().await;
    assert!(observed.verdicts.iter().all(|allow| *allow), "every answered check was decided, never failed closed");
    // A stream sent after the server's GOAWAY (NO_ERROR) is one HTTP/2 says it never processed.
    let never_processed = |failure: &String| failure.contains("GoAway") && failure.contains("NO_ERROR");
    let lost: Vec<_> = observed.failures.iter().filter(|failure| !never_processed(failure)).collect();
    assert!(lost.is_empty(), "checks started before SIGTERM failed: {lost:?}");
    for failure in &observed.failures_after_signal {
        let refused = never_processed(failure) || failure.contains("Connection refused") || failure.contains("connect");
        assert!(refused, "a check failed other than by a refused connection: {failure}");
    }
}

/// A server on a policy directory holding [`ALLOW_X`] as `p.yaml`, polled every `poll_ms` (0:
/// reloaded on SIGHUP only); its settings file; and a client of its gRPC door.
async fn server_on_allow_x(
    poll_ms: u64,
) -> (tempfile::TempDir, tempfile::NamedTempFile, Server, AuthorizationClient<tonic::transport::Channel>) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("p.yaml"), ALLOW_X).expect("write");
    let settings = settings_file(poll_ms);
    let server = Server::start_with(&[dir.path()], Some(settings.path()));
    let client = server.grpc_client().await;
    (dir, settings, server, client)
}

async fn verdict(client: &mut AuthorizationClient<tonic::transport::Channel>) -> i32 {
    client.check(check_x()).await.expect("check").into_inner().status.map_or(-1, |status| status.code)
}

/// Waits until `portcullis_reloads_total{result="error"}` reaches `count`.
async fn wait_for_reload_errors(server: &Server, count: f64) {
    let why = format!("reload error {count} was never counted");
    let errors = r#"portcullis_reloads_total{result="error"}"#;
    eventually(&why, async || server.metric(errors).unwrap_or(0.0) >= count).await;
}

/// Waits until a check of `/x` answers the gRPC status `code`.
async fn wait_for_verdict_code(client: &mut AuthorizationClient<tonic::transport::Channel>, code: i32, why: &str) {
    eventually(why, async || verdict(client).await == code).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_kind_added_to_a_valid_set_is_refused_on_reload_and_the_old_decisions_stay() {
    let (dir, _settings, server, mut client) = server_on_allow_x(100).await;
    assert_eq!(verdict(&mut client).await, 0);

    std::fs::write(dir.path().join("guard.yaml"), GUARD_MISSPELLED).expect("write");
    wait_for_reload_errors(&server, 1.0).await;
    assert_eq!(verdict(&mut client).await, 0, "the last good set stays");
    let refusal = "guard.yaml:2: unknown kind `AuthorisationPolicy` of `security.istio.io`";
    server.wait_for_log_line(&[refusal]);
    assert_eq!(server.metric(r#"portcullis_reloads_total{result="ok"}"#).unwrap_or(0.0), 0.0);
    assert_eq!(server.metric("portcullis_policy_generation"), Some(1.0));

    // A document of another group is still skipped, and a reload says so.
    std::fs::write(dir.path().join("guard.yaml"), DEPLOYMENT).expect("write");
    let skipped = server.wait_for_log_line(&["Skipped a document"]);
    assert!(skipped.contains("guard.yaml:1") && skipped.contains("apps/v1/Deployment"), "{skipped}");
    assert!(skipped.contains("not an Istio security policy"), "{skipped}");
    assert_eq!(server.metric(r#"portcullis_reloads_total{result="ok"}"#), Some(1.0));
    assert_eq!(server.terminate_within(EXIT_BOUND).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_symlink_to_dev_zero_is_refused_by_the_poller_and_a_later_good_change_reloads() {
    let (dir, _settings, server, mut client) = server_on_allow_x(100).await;
    assert_eq!(verdict(&mut client).await, 0);

    let fifo = dir.path().join("pipe.yaml");
    make_fifo(&fifo);
    wait_for_reload_errors(&server, 1.0).await;
    server.wait_for_log_line(&["pipe.yaml: not a regular file (fifo)"]);
    assert_eq!(verdict(&mut client).await, 0, "the last good set stays");
    std::fs::remove_file(&fifo).expect("remove fifo");

    let zero = dir.path().join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    wait_for_reload_errors(&server, 2.0).await;
    let refusal = "zero.yaml: not a regular file (character device)";
    server.wait_for_log_line(&[refusal]);
    assert_eq!(verdict(&mut client).await, 0, "the last good set stays");
    std::fs::remove_file(&zero).expect("remove symlink");

    std::fs::write(dir.path().join("p.yaml"), DENY_X).expect("write");
    wait_for_verdict_code(&mut client, 7, "a good change after the refusals never reloaded").await;
    assert_eq!(server.terminate_within(EXIT_BOUND).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_never_blocks_sighup_reloads() {
    let (dir, _settings, server, mut client) = server_on_allow_x(0).await;

    let fifo = dir.path().join("pipe.yaml");
    make_fifo(&fifo);
    server.signal("-HUP");
    wait_for_reload_errors(&server, 1.0).await;
    server.signal("-HUP");
    wait_for_reload_errors(&server, 2.0).await;
    assert_eq!(verdict(&mut client).await, 0, "the last good set stays");
    let (status, _) = http_get(server.admin, "/readyz");
    assert_eq!(status, 200);

    std::fs::remove_file(&fifo).expect("remove fifo");
    std::fs::write(dir.path().join("p.yaml"), DENY_X).expect("write");
    server.signal("-HUP");
    wait_for_verdict_code(&mut client, 7, "SIGHUP no longer reloads after a fifo").await;
    assert_eq!(server.terminate_within(EXIT_BOUND).code(), Some(0));
}
