//! The server's background work through the real binary: one key-refresh loop per issuer, stopped when a reload drops the issuer and replaced when its `jwksUri` moves; start-up fetches shared with the first tokens; shutdown with a fetch pending; `/readyz` naming why keys are missing.

#![expect(clippy::expect_used, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::time::{Duration, Instant};

use forge::{Behavior, FakeIdp, RSA, claims_of, jwks, public_jwk, remote_issuers_in, sign};
use jsonwebtoken::Algorithm;
use support::{CheckBuilder, Server, config_file, http_get, policy_dir, proxy_answer};

const NAMESPACE: &str = "tasks";
/// The issuer whose loops the tests watch.
const WATCHED: &str = "https://watched.tasks.test";
/// An issuer that stays in every set: its IdP's request count is the tests' clock.
const CLOCK: &str = "https://clock.tasks.test";

fn keys() -> String {
    jwks(&[public_jwk(RSA, Algorithm::RS256, Some("k"))])
}

/// Polls `condition` until it holds; fails the test after a generous deadline (a hang guard).
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server refreshing every issuer's keys each second, reloading on file changes.
fn start(policies: &tempfile::TempDir) -> (Server, tempfile::NamedTempFile) {
    let settings = config_file("jwks_refresh_interval_secs: 1\nreload_poll_interval_ms: 100\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));
    (server, settings)
}

/// Rewrites the policy set and waits until the server serves it as generation `generation`.
fn reload_to(server: &Server, policies: &tempfile::TempDir, yaml: &str, generation: f64) {
    std::fs::write(policies.path().join("policies.yaml"), yaml).expect("write policies");
    eventually("the new set is live", || server.metric("portcullis_policy_generation") == Some(generation));
}

/// Waits until the clock's IdP served `ticks` more requests (each a refresh interval apart),
/// and returns how many `idp` got meanwhile.
fn requests_during_ticks(clock: &FakeIdp, idp: &FakeIdp, ticks: usize) -> usize {
    let (clock_before, before) = (clock.requests(), idp.requests());
    clock.wait_for_requests(clock_before + ticks);
    idp.requests() - before
}

#[test]
fn a_reload_that_removes_an_issuer_stops_its_key_fetches_and_drops_its_series() {
    let (watched, clock) = (FakeIdp::start(Behavior::Serve(keys())), FakeIdp::start(Behavior::Serve(keys())));
    let both = remote_issuers_in(NAMESPACE, &[(WATCHED, watched.url("/certs")), (CLOCK, clock.url("/certs"))]);
    let policies = policy_dir(&both);
    let (server, _settings) = start(&policies);
    assert!(requests_during_ticks(&clock, &watched, 2) >= 1, "the watched issuer is refreshed too");
    let series = format!("portcullis_jwks_keys{{issuer=\"{WATCHED}\"}}");
    assert_eq!(server.metric(&series), Some(1.0));

    reload_to(&server, &policies, &remote_issuers_in(NAMESPACE, &[(CLOCK, clock.url("/certs"))]), 2.0);
    assert_eq!(server.metric(&series), None, "its series are gone");
    // At most one fetch already under way when the reload dropped it.
    let after = requests_during_ticks(&clock, &watched, 4);
    assert!(after <= 1, "the dropped issuer's IdP got {after} requests over 4 refresh intervals");
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn a_changed_jwks_uri_leaves_one_refresh_loop_that_fetches_from_the_new_uri() {
    let (watched, clock) = (FakeIdp::start(Behavior::Serve(keys())), FakeIdp::start(Behavior::Serve(keys())));
    let at = |path: &str| remote_issuers_in(NAMESPACE, &[(WATCHED, watched.url(path)), (CLOCK, clock.url("/certs"))]);
    let policies = policy_dir(&at("/old"));
    let (server, _settings) = start(&policies);
    reload_to(&server, &policies, &at("/new"), 2.0);
    let from = watched.requests();
    let during = requests_during_ticks(&clock, &watched, 6);
    let paths = watched.paths()[from..].to_vec();
    assert!(paths.iter().all(|path| path == "/new"), "after the reload only the new URI is asked: {paths:?}");
    // One loop fetches once per interval, as the clock's does; two would fetch twice as often.
    assert!(during <= 7, "{during} fetches over 6 refresh intervals: more than one loop");
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_arriving_during_the_start_up_fetch_shares_it() {
    let idp = FakeIdp::start(Behavior::Serve(keys()));
    idp.hold();
    let policies = policy_dir(&remote_issuers_in(NAMESPACE, &[(WATCHED, idp.url("/certs"))]));
    let settings = config_file(
        "jwks_min_refetch_interval_secs: 0\njwks_refetch_wait_ms: 60000\njwks_ready_timeout_secs: 120\njwks_fetch_timeout_ms: 120000\n",
    );
    let server = Server::start_listening(&[policies.path()], Some(settings.path()), &[]);
    idp.wait_for_requests(1);
    let token = sign(RSA, Algorithm::RS256, Some("k"), &claims_of(WATCHED));
    let client = server.grpc_client().await;
    let check = tokio::spawn(async move {
        let mut client = client;
        client.check(CheckBuilder::new("GET", "/x").namespace(NAMESPACE).bearer(&token).build()).await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("portcullis_checks_in_flight") != Some(1.0) {
        assert!(Instant::now() < deadline, "the check never waited for keys");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    idp.release();
    let answered = check.await.expect("joins").expect("Check answers").into_inner();
    assert_eq!(proxy_answer(&answered).0, 200, "decided with the start-up fetch's keys: {answered:?}");
    assert_eq!(idp.requests(), 1, "one JWKS request served the start-up and the token: {:?}", idp.paths());
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn shutdown_stops_a_refresh_loop_waiting_on_a_held_fetch_and_the_server_exits() {
    let idp = FakeIdp::start(Behavior::Serve(keys()));
    idp.hold();
    let policies = policy_dir(&remote_issuers_in(NAMESPACE, &[(WATCHED, idp.url("/certs"))]));
    let settings = config_file("jwks_ready_timeout_secs: 1\njwks_fetch_timeout_ms: 600000\n");
    // Ready once the wait for keys ran out; the fetch is still held, and the loop waits on it.
    let server = Server::start_with(&[policies.path()], Some(settings.path()));
    idp.wait_for_requests(1);
    server.wait_for_log_line(&["Ready"]);
    // A hang guard, not a timing assertion.
    assert_eq!(server.terminate_within(Duration::from_secs(60)).code(), Some(0));
}

#[test]
fn readyz_names_each_issuer_without_keys_and_the_cause_without_credentials() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let up = FakeIdp::start(Behavior::Serve(keys()));
    let secret_uri = format!("http://client:s3cret-password@{address}/certs?api_key=s3cret-key");
    let policies = policy_dir(&remote_issuers_in(NAMESPACE, &[(WATCHED, secret_uri), (CLOCK, up.url("/certs"))]));
    let settings = config_file("jwks_ready_timeout_secs: 3600\n");
    let server = Server::start_with(&[policies.path()], Some(settings.path()));
    let (status, body) = http_get(server.admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    let expected = format!("no keys for issuer {WATCHED}: GET `http://{address}/certs`: cannot connect");
    assert!(body.contains(&expected), "`{expected}` in {body}");
    assert!(!body.contains("s3cret"), "{body}");
    assert!(!body.contains(CLOCK), "an issuer with keys is not named: {body}");
    assert!(server.log_lines().iter().all(|line| !line.contains("s3cret")), "nor is a credential logged");
    assert_eq!(server.terminate().code(), Some(0));
}
