//! Promises of the README about the server's life, through the real binary: shutdown, start-up readiness, reload with authentication, single-flight key refetch, the decision-log settings and a panic inside a check.

#![expect(clippy::expect_used, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use forge::{Behavior, FakeIdp, OTHER_RSA, RSA, claims_of, jwks, public_jwk, remote_issuers_in, sign};
use jsonwebtoken::Algorithm;
use support::{
    CheckBuilder, Server, config_file, eventually, http_get, metadata_field, paths_policy, policy_dir, proxy_answer,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const NAMESPACE: &str = "life";
const ISSUER: &str = "https://idp.lifecycle.test";

/// The key set holding the key a token of `kid` `old` is signed with.
fn old_keys() -> String {
    jwks(&[public_jwk(OTHER_RSA, Algorithm::RS256, Some("old"))])
}

/// The key set after a rotation: `old` and `new`.
fn rotated_keys() -> String {
    jwks(&[public_jwk(OTHER_RSA, Algorithm::RS256, Some("old")), public_jwk(RSA, Algorithm::RS256, Some("new"))])
}

/// A token of `issuer` signed with the key `new` of [`rotated_keys`].
fn token_of_new_key(issuer: &str) -> String {
    sign(RSA, Algorithm::RS256, Some("new"), &claims_of(issuer))
}

/// A GET of `/x` in [`NAMESPACE`] carrying `token`.
fn check_with(token: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    CheckBuilder::new("GET", "/x").namespace(NAMESPACE).bearer(token).build()
}

fn is_refused(address: SocketAddr) -> bool {
    TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err()
}

// ---------------------------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------------------------

/// On SIGTERM gRPC health turns NOT_SERVING and the gRPC door stops accepting, while `/readyz`
/// still answers, 503, for as long as a check is in flight; the log says how many were; the check
/// then finishes with its real decision (an allow, with a key fetched after the signal), the
/// process exits 0, and no door accepts connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_probes_down_at_once_and_lets_the_check_in_flight_finish_with_its_real_decision() {
    let idp = FakeIdp::start(Behavior::Serve(old_keys()));
    let policies = policy_dir(&remote_issuers_in(NAMESPACE, &[(ISSUER, idp.url("/certs"))]));
    let settings = config_file("jwks_min_refetch_interval_secs: 0\njwks_refetch_wait_ms: 60000\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc)).expect("endpoint");
    let mut health = HealthClient::new(endpoint.connect().await.expect("connects"));
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    let first = watch.message().await.expect("health answers").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // A token of a key the server does not hold yet: its check waits for the held refetch.
    let fetches_before = idp.requests();
    idp.hold();
    idp.set(Behavior::Serve(rotated_keys()));
    let client = server.grpc_client().await;
    let in_flight = tokio::spawn(async move {
        let mut client = client;
        client.check(check_with(&token_of_new_key(ISSUER))).await
    });
    idp.wait_for_requests(fetches_before + 1);
    assert_eq!(server.metric("portcullis_checks_in_flight"), Some(1.0));

    server.signal("-TERM");
    let line = server.wait_for_log_line(&["Shutting down"]);
    assert!(line.contains("checks_in_flight=1"), "the shutdown line counts the check in flight: {line}");
    let grpc = server.grpc;
    eventually("the gRPC door stops accepting connections", async || is_refused(grpc)).await;
    assert_eq!(http_get(server.admin, "/readyz").0, 503, "probes still get an answer while the check is in flight");
    let update = watch.message().await.expect("health watch answers").expect("a status");
    assert_eq!(update.status, ServingStatus::NotServing as i32);
    drop((watch, health));
    assert!(!in_flight.is_finished(), "the check is still waiting for the held key fetch");

    idp.release();
    let answered = in_flight.await.expect("joins").expect("the check in flight is answered").into_inner();
    assert_eq!(proxy_answer(&answered).0, 200, "decided with the key fetched during the drain: {answered:?}");
    let admin = server.admin;
    assert_eq!(server.wait_for_exit().code(), Some(0));
    assert!(is_refused(grpc) && is_refused(admin), "no door accepts connections after the drain");
}

// ---------------------------------------------------------------------------------------------
// Start-up readiness.
// ---------------------------------------------------------------------------------------------

/// `/readyz` answers 503 while one issuer's first key fetch is held, though the other issuer's
/// keys are in, and 200 once it finishes; that issuer's tokens are then accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_first_key_fetch_of_every_issuer_has_finished() {
    let prompt = FakeIdp::start(Behavior::Serve(old_keys()));
    let held = FakeIdp::start(Behavior::Serve(rotated_keys()));
    held.hold();
    let slow_issuer = "https://slow.lifecycle.test";
    let policies =
        policy_dir(&remote_issuers_in(NAMESPACE, &[(ISSUER, prompt.url("/certs")), (slow_issuer, held.url("/certs"))]));
    let settings = config_file("jwks_ready_timeout_secs: 120\njwks_fetch_timeout_ms: 120000\n");
    let server = Server::start_listening(&[policies.path()], Some(settings.path()), &[]);
    prompt.wait_for_requests(1);
    held.wait_for_requests(1);
    let prompt_keys_in = format!("portcullis_jwks_keys{{issuer=\"{ISSUER}\"}}");
    eventually("the prompt issuer's keys are in", async || server.metric(&prompt_keys_in) == Some(1.0)).await;
    assert_eq!(http_get(server.admin, "/readyz").0, 503, "one issuer's first fetch is still held");

    held.release();
    eventually("ready after the held fetch finished", async || http_get(server.admin, "/readyz").0 == 200).await;
    let answered = server.check(check_with(&token_of_new_key(slow_issuer))).await;
    assert_eq!(proxy_answer(&answered).0, 200, "{answered:?}");
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Reload with authentication.
// ---------------------------------------------------------------------------------------------

/// A reload that adds an issuer swaps only after that issuer's keys are in: while its fetch is
/// held the old set answers, and the first check that sees the new generation accepts its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_fetches_a_new_issuers_keys_before_the_swap() {
    let first = FakeIdp::start(Behavior::Serve(old_keys()));
    let added = FakeIdp::start(Behavior::Serve(rotated_keys()));
    let added_issuer = "https://added.lifecycle.test";
    let policies = policy_dir(&remote_issuers_in(NAMESPACE, &[(ISSUER, first.url("/certs"))]));
    let settings = config_file("reload_poll_interval_ms: 100\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));
    let token = token_of_new_key(added_issuer);
    let before = server.check(check_with(&token)).await;
    assert_eq!(proxy_answer(&before).0, 401, "the first set does not know the issuer: {before:?}");

    added.hold();
    let both = remote_issuers_in(NAMESPACE, &[(ISSUER, first.url("/certs")), (added_issuer, added.url("/certs"))]);
    std::fs::write(policies.path().join("policies.yaml"), both).expect("write policies");
    added.wait_for_requests(1);
    let during = server.check(check_with(&token)).await;
    assert_eq!(proxy_answer(&during), proxy_answer(&before), "the old set answers while the fetch is held");
    assert_eq!(server.metric("portcullis_policy_generation"), Some(1.0));

    added.release();
    let mut client = server.grpc_client().await;
    loop {
        let generation_before = server.metric("portcullis_policy_generation");
        let answered = client.check(check_with(&token)).await.expect("Check answers").into_inner();
        let generation_after = server.metric("portcullis_policy_generation");
        let answer = proxy_answer(&answered);
        if generation_before == Some(2.0) {
            assert_eq!(answer.0, 200, "the first check that sees the new set: {answered:?}");
            break;
        }
        if generation_after == Some(1.0) {
            assert_eq!(answer, proxy_answer(&before), "before the swap the old set answers");
        } else {
            // Swapped while this check ran: either set's answer, never a refusal for lack of keys.
            assert!(answer.0 == 200 || answer == proxy_answer(&before), "around the swap: {answered:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.terminate().code(), Some(0));
}

/// A check in flight when a reload swaps keeps the set it started with: it waits for a key
/// refetch, the reload adds a DENY of its path meanwhile, and it is still decided by the old set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_flight_during_a_reload_is_decided_by_the_set_it_started_with() {
    let idp = FakeIdp::start(Behavior::Serve(old_keys()));
    let allowing = remote_issuers_in(NAMESPACE, &[(ISSUER, idp.url("/certs"))]);
    let policies = policy_dir(&allowing);
    let settings = config_file("jwks_min_refetch_interval_secs: 0\njwks_refetch_wait_ms: 60000\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));

    idp.hold();
    idp.set(Behavior::Serve(rotated_keys()));
    let fetches_before = idp.requests();
    let client = server.grpc_client().await;
    let in_flight = tokio::spawn(async move {
        let mut client = client;
        client.check(check_with(&token_of_new_key(ISSUER))).await
    });
    idp.wait_for_requests(fetches_before + 1);
    std::fs::write(
        policies.path().join("policies.yaml"),
        format!("{allowing}---\n{}", paths_policy(NAMESPACE, "deny-x", "DENY", &["/x"])),
    )
    .expect("write policies");
    server.signal("-HUP");
    eventually("the DENY set is live", async || server.metric("portcullis_policy_generation") >= Some(2.0)).await;

    idp.release();
    let answered = in_flight.await.expect("joins").expect("Check answers").into_inner();
    assert_eq!(proxy_answer(&answered).0, 200, "decided by the set it started with: {answered:?}");
    let after = server.check(check_with(&token_of_new_key(ISSUER))).await;
    assert_eq!(metadata_field(&after, "reason").as_deref(), Some("denied_by_policy"), "{after:?}");
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Single-flight refetch.
// ---------------------------------------------------------------------------------------------

/// Many concurrent checks whose token names a key the server lacks cause one refetch, which all
/// of them wait for and are then decided with; no rate limit is set, so only single flight
/// keeps the count at one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_with_an_unknown_kid_share_one_refetch() {
    const CHECKS: usize = 8;
    let idp = FakeIdp::start(Behavior::Serve(old_keys()));
    let policies = policy_dir(&remote_issuers_in(NAMESPACE, &[(ISSUER, idp.url("/certs"))]));
    let settings = config_file("jwks_min_refetch_interval_secs: 0\njwks_refetch_wait_ms: 60000\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));

    idp.hold();
    idp.set(Behavior::Serve(rotated_keys()));
    let fetches_before = idp.requests();
    let token = token_of_new_key(ISSUER);
    let mut checks = Vec::new();
    for _ in 0..CHECKS {
        let client = server.grpc_client().await;
        let request = check_with(&token);
        checks.push(tokio::spawn(async move {
            let mut client = client;
            client.check(request).await
        }));
    }
    // Every check is waiting on the held fetch before it is answered.
    eventually("every check is in flight", async || {
        server.metric("portcullis_checks_in_flight") == Some(CHECKS as f64)
    })
    .await;
    idp.release();
    for check in checks {
        let answered = check.await.expect("joins").expect("Check answers").into_inner();
        assert_eq!(proxy_answer(&answered).0, 200, "{answered:?}");
    }
    assert_eq!(idp.requests() - fetches_before, 1, "paths asked: {:?}", idp.paths());
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Decision-log settings.
// ---------------------------------------------------------------------------------------------

/// ALLOW `/allowed` in [`NAMESPACE`]; anything else there is denied.
const ALLOW_ALLOWED: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-allowed, namespace: life}
spec:
  rules:
  - to: [{operation: {paths: ["/allowed"]}}]
"#;

/// Starts a server with `settings`, sends a check per `(path, request id)` in order, then fences
/// the log with a reload, and returns the decision lines written before the fence.
async fn decision_lines(settings: &str, checks: &[(&str, &str)]) -> Vec<String> {
    let policies = policy_dir(ALLOW_ALLOWED);
    let settings = config_file(settings);
    let server = Server::start_with(&[policies.path()], Some(settings.path()));
    let mut client = server.grpc_client().await;
    for (path, request_id) in checks {
        let request = CheckBuilder::new("GET", path).namespace(NAMESPACE).header("x-request-id", request_id).build();
        client.check(request).await.expect("Check answers");
    }
    // Each line is written before its answer is sent; the reload's line comes after them all.
    server.signal("-HUP");
    let lines = server.log_until(&["Reloaded the policy set"]);
    assert_eq!(server.terminate().code(), Some(0));
    lines.into_iter().filter(|line| line.contains("Decided")).collect()
}

/// The request ids of the decision lines, in order.
fn logged_ids(lines: &[String]) -> Vec<String> {
    lines.iter().filter_map(|line| line.split("request_id=\"").nth(1)?.split('"').next().map(str::to_string)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_all_logs_allows_and_denies_deny_logs_denies_and_none_logs_nothing() {
    let checks = [("/allowed", "allow-1"), ("/denied", "deny-1")];
    let all = decision_lines("decision_log: all\n", &checks).await;
    assert_eq!(logged_ids(&all), ["allow-1", "deny-1"], "{all:?}");
    let denies = decision_lines("decision_log: deny\n", &checks).await;
    assert_eq!(logged_ids(&denies), ["deny-1"], "{denies:?}");
    let none = decision_lines("decision_log: none\n", &checks).await;
    assert_eq!(none, Vec::<String>::new());
}

/// A rate of 0.5 logs 1 line in round(1/0.5) = 2: the first, third and fifth of six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_sample_rate_logs_one_line_in_round_one_over_the_rate() {
    let ids: Vec<String> = (1..=6).map(|index| format!("deny-{index}")).collect();
    let checks: Vec<(&str, &str)> = ids.iter().map(|id| ("/denied", id.as_str())).collect();
    let sampled = decision_lines("decision_log: deny\ndecision_log_sample_rate: 0.5\n", &checks).await;
    assert_eq!(logged_ids(&sampled), ["deny-1", "deny-3", "deny-5"], "{sampled:?}");
}

/// With a budget of 3 lines a second, a burst of 40 denials writes at most 3 lines in each second
/// it touches, and the first line dropped brings a warning; a denial after a pause of over a
/// second opens a new second and is written. Lines written and lines the metric counts as
/// dropped add up to every denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_max_lines_per_sec_writes_its_budget_and_counts_the_lines_it_drops() {
    const BURST: usize = 40;
    let policies = policy_dir(ALLOW_ALLOWED);
    let settings = config_file("decision_log_max_lines_per_sec: 3\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));
    let mut client = server.grpc_client().await;
    let deny = |request_id: &str| {
        CheckBuilder::new("GET", "/denied").namespace(NAMESPACE).header("x-request-id", request_id).build()
    };
    let burst_started = std::time::Instant::now();
    for index in 0..BURST {
        client.check(deny(&format!("burst-{index}"))).await.expect("Check answers");
    }
    let seconds_touched = burst_started.elapsed().as_secs() + 2;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.check(deny("after-the-pause")).await.expect("Check answers");
    let dropped_metric = server.metric("portcullis_decision_log_lines_dropped_total").expect("the series is exported");
    server.signal("-HUP");
    let lines = server.log_until(&["Reloaded the policy set"]);
    assert_eq!(server.terminate().code(), Some(0));

    let written = logged_ids(&lines.iter().filter(|line| line.contains("Decided")).cloned().collect::<Vec<_>>());
    let burst_written = written.iter().filter(|id| id.starts_with("burst-")).count();
    assert!(burst_written >= 3, "the first second writes its budget: {written:?}");
    assert!(burst_written as u64 <= 3 * seconds_touched, "{burst_written} lines in {seconds_touched} seconds");
    assert_eq!(written.last().map(String::as_str), Some("after-the-pause"), "a new second writes again");
    assert_eq!(written.len() as f64 + dropped_metric, (BURST + 1) as f64, "every denial is written or counted");
    let warnings: Vec<&String> = lines.iter().filter(|line| line.contains("Decision-log lines not written")).collect();
    assert!(
        warnings.first().is_some_and(|warning| warning.contains("lines_dropped=1 ")),
        "the first line dropped is warned of at once: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_level_is_the_level_of_each_decision_line() {
    for (setting, level) in [("error", " ERROR "), ("warn", " WARN "), ("info", " INFO ")] {
        let lines = decision_lines(&format!("decision_log_level: {setting}\n"), &[("/denied", "deny-1")]).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(level), "`{setting}` gives a line at{level}: {}", lines[0]);
    }
}

// ---------------------------------------------------------------------------------------------
// A panic inside a check.
// ---------------------------------------------------------------------------------------------

/// Through the real binary: the debug builds' fault-injection hook (`PORTCULLIS_DEBUG_PANIC_ON_TOKEN`,
/// see `src/identity/token_cache.rs`) makes the token cache panic on one token; that check is a 403 deny,
/// `internal_error`, logged and counted, and the server goes on deciding the next checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_a_check_is_a_403_internal_error_and_the_server_keeps_serving() {
    let idp = FakeIdp::start(Behavior::Serve(rotated_keys()));
    let policies = policy_dir(&remote_issuers_in(NAMESPACE, &[(ISSUER, idp.url("/certs"))]));
    let poisoned = token_of_new_key(ISSUER);
    let healthy = sign(OTHER_RSA, Algorithm::RS256, Some("old"), &claims_of(ISSUER));
    let server =
        Server::start_with_env(&[policies.path()], None, &[("PORTCULLIS_DEBUG_PANIC_ON_TOKEN", poisoned.as_str())]);
    let mut client = server.grpc_client().await;

    let panicked = client.check(check_with(&poisoned)).await.expect("Check answers").into_inner();
    assert_eq!(proxy_answer(&panicked), (403, "RBAC: access denied".to_string()));
    assert_eq!(metadata_field(&panicked, "reason").as_deref(), Some("internal_error"));
    server.wait_for_log_line(&["Check panicked"]);

    let next = client.check(check_with(&healthy)).await.expect("the same connection still answers").into_inner();
    assert_eq!(proxy_answer(&next).0, 200, "{next:?}");
    let again = server.check(check_with(&poisoned)).await;
    assert_eq!(metadata_field(&again, "reason").as_deref(), Some("internal_error"));
    let internal = r#"portcullis_checks_total{door="grpc",decision="deny",reason="internal_error"}"#;
    assert_eq!(server.metric(internal), Some(2.0));
    assert_eq!(server.terminate().code(), Some(0));
}
