//! Hot reload under load: good and bad policy sets swapped in a ConfigMap-shaped directory of real symlinks, SIGHUP, and graceful shutdown.

#![expect(clippy::expect_used, reason = "test helpers: a failed step fails the test")]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use support::{Server, http_get, make_fifo};
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

fn check_x() -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/x".into(),
                    host: "h".into(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            context_extensions: HashMap::from([("namespace".to_string(), "ns".to_string())]),
            ..AttributeContext::default()
        }),
    }
}

fn settings_file(poll_ms: u64) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), format!("reload_poll_interval_ms: {poll_ms}\n")).expect("write");
    file
}

/// Decisions observed by a stream of checks: `true` for allow, in order; and any failures.
#[derive(Default)]
struct Observed {
    verdicts: Vec<bool>,
    failures: Vec<String>,
}

async fn stream_checks(address: std::net::SocketAddr, stop: Arc<AtomicBool>, observed: Arc<Mutex<Observed>>) {
    let mut client = AuthorizationClient::connect(format!("http://{address}")).await.expect("connects");
    while !stop.load(Ordering::Relaxed) {
        let outcome = client.check(check_x()).await;
        let mut observed = observed.lock().await;
        match outcome {
            Ok(response) => {
                let code = response.into_inner().status.map_or(-1, |status| status.code);
                observed.verdicts.push(code == 0);
            }
            Err(status) => observed.failures.push(status.to_string()),
        }
    }
}

async fn wait_for_verdict(observed: &Arc<Mutex<Observed>>, allow: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if observed.lock().await.verdicts.last() == Some(&allow) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn metric(server: &Server, line_start: &str) -> Option<f64> {
    let (_, text) = http_get(server.admin, "/metrics");
    text.lines().find_map(|line| line.strip_prefix(line_start)).and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_sets_swap_in_under_load_and_a_bad_set_is_never_served() {
    let mut dir = ConfigMapDir::new(ALLOW_X);
    let settings = settings_file(100);
    let server = Server::start_with(&[dir.path()], Some(settings.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let load = tokio::spawn(stream_checks(server.grpc, stop.clone(), observed.clone()));
    assert!(wait_for_verdict(&observed, true, Duration::from_secs(5)).await, "the first set allows /x");

    dir.publish(BROKEN);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&server, r#"portcullis_reloads_total{result="error"} "#).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "the broken set was never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_good = observed.lock().await.verdicts.len();
    dir.publish(DENY_X);
    assert!(wait_for_verdict(&observed, false, Duration::from_secs(5)).await, "the second good set denies /x");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");

    let observed = observed.lock().await;
    assert!(observed.failures.is_empty(), "checks failed during reloads: {:?}", observed.failures);
    let first_deny = observed.verdicts.iter().position(|allow| !allow).expect("a deny");
    assert!(first_deny >= before_good, "the broken set changed decisions");
    assert!(observed.verdicts[..first_deny].iter().all(|allow| *allow), "allow until the good swap");
    assert!(observed.verdicts[first_deny..].iter().all(|allow| !*allow), "deny from the good swap on");
    assert!(observed.verdicts.len() > 20, "only {} checks ran", observed.verdicts.len());
    assert_eq!(metric(&server, r#"portcullis_reloads_total{result="ok"} "#), Some(1.0));
    assert_eq!(metric(&server, "portcullis_policy_generation "), Some(2.0));
    let log = server.log_lines().join("\n");
    assert!(log.contains("policy.yaml:5: authorization policy `ns/p`: spec.action: unknown action `NEVER`"), "{log}");
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_removed_directory_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("dir");
    std::fs::write(policies.join("p.yaml"), ALLOW_X).expect("write");
    let settings = settings_file(0);
    let server = Server::start_with(&[&policies], Some(settings.path()));
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc)).await.expect("connects");
    let code =
        |response: envoy_types::pb::envoy::service::auth::v3::CheckResponse| response.status.map_or(-1, |s| s.code);
    assert_eq!(code(client.check(check_x()).await.expect("check").into_inner()), 0);

    std::fs::write(policies.join("p.yaml"), DENY_X).expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code(client.check(check_x()).await.expect("check").into_inner()), 0, "no polling: no reload yet");
    server.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while code(client.check(check_x()).await.expect("check").into_inner()) != 7 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::remove_dir_all(&policies).expect("remove");
    server.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&server, r#"portcullis_reloads_total{result="error"} "#).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "the missing directory was never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code(client.check(check_x()).await.expect("check").into_inner()), 7, "the last good set stays");
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_check_and_exits_cleanly() {
    let dir = ConfigMapDir::new(ALLOW_X);
    let server = Server::start(&[dir.path()]);
    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let streams: Vec<_> =
        (0..4).map(|_| tokio::spawn(stream_checks(server.grpc, stop.clone(), observed.clone()))).collect();
    assert!(wait_for_verdict(&observed, true, Duration::from_secs(5)).await);
    let answered_before = observed.lock().await.verdicts.len();
    let pid = server.pid();
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.expect("join");
    stop.store(true, Ordering::Relaxed);
    for stream in streams {
        stream.await.expect("stream task");
    }
    assert_eq!(status.code(), Some(0), "pid {pid} exits 0 on SIGTERM");
    let observed = observed.lock().await;
    assert!(observed.verdicts.len() >= answered_before);
    assert!(observed.verdicts.iter().all(|allow| *allow), "every answered check was decided, never failed closed");
    // Checks started after the listeners closed fail to connect, and a stream opened after the
    // server's GOAWAY (NO_ERROR) is one HTTP/2 says it never processed; none fails mid-flight.
    for failure in &observed.failures {
        let never_processed = failure.contains("GoAway") && failure.contains("NO_ERROR");
        let refused = never_processed
            || failure.contains("Unavailable")
            || failure.contains("unavailable")
            || failure.contains("connect");
        assert!(refused, "a check failed other than by a refused connection: {failure}");
    }
}

async fn verdict(client: &mut AuthorizationClient<tonic::transport::Channel>) -> i32 {
    client.check(check_x()).await.expect("check").into_inner().status.map_or(-1, |status| status.code)
}

/// Waits until `portcullis_reloads_total{result="error"}` reaches `count`: a hang guard, so a
/// reload stuck reading a file fails the test instead of hanging it.
async fn wait_for_reload_errors(server: &Server, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(server, r#"portcullis_reloads_total{result="error"} "#).unwrap_or(0.0) < count {
        assert!(Instant::now() < deadline, "reload error {count} was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_verdict_code(client: &mut AuthorizationClient<tonic::transport::Channel>, code: i32, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while verdict(client).await != code {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_kind_added_to_a_valid_set_is_refused_on_reload_and_the_old_decisions_stay() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("p.yaml"), ALLOW_X).expect("write");
    let settings = settings_file(100);
    let server = Server::start_with(&[dir.path()], Some(settings.path()));
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc)).await.expect("connects");
    assert_eq!(verdict(&mut client).await, 0);

    std::fs::write(dir.path().join("guard.yaml"), GUARD_MISSPELLED).expect("write");
    wait_for_reload_errors(&server, 1.0).await;
    assert_eq!(verdict(&mut client).await, 0, "the last good set stays");
    let refusal = "guard.yaml:2: unknown kind `AuthorisationPolicy` of `security.istio.io`";
    server.wait_for_log_line(&[refusal]);
    assert_eq!(metric(&server, r#"portcullis_reloads_total{result="ok"} "#).unwrap_or(0.0), 0.0);
    assert_eq!(metric(&server, "portcullis_policy_generation "), Some(1.0));

    // A document of another group is still skipped, and a reload says so.
    std::fs::write(dir.path().join("guard.yaml"), DEPLOYMENT).expect("write");
    let skipped = server.wait_for_log_line(&["Skipped a document"]);
    assert!(skipped.contains("guard.yaml:1") && skipped.contains("apps/v1/Deployment"), "{skipped}");
    assert!(skipped.contains("not an Istio security policy"), "{skipped}");
    assert_eq!(metric(&server, r#"portcullis_reloads_total{result="ok"} "#), Some(1.0));
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_symlink_to_dev_zero_is_refused_by_the_poller_and_a_later_good_change_reloads() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("p.yaml"), ALLOW_X).expect("write");
    let settings = settings_file(100);
    let server = Server::start_with(&[dir.path()], Some(settings.path()));
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc)).await.expect("connects");
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
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_never_blocks_sighup_reloads() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("p.yaml"), ALLOW_X).expect("write");
    let settings = settings_file(0);
    let server = Server::start_with(&[dir.path()], Some(settings.path()));
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc)).await.expect("connects");

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
    assert_eq!(server.terminate().code(), Some(0));
}
