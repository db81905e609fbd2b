//! The check doors on a runtime per core: two current-thread runtimes, each accepting both doors on its own `SO_REUSEPORT` listeners, sharing the policy set and the connection limit, reloading and stopping cleanly without resetting a connection queued in a backlog; `auto` on one thread.

#![expect(clippy::expect_used, clippy::panic, reason = "test helpers: a failed step fails the test")]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{CheckBuilder, Server, eventually, http_request, paths_policy, policy_dir, proxy_answer, status_in};

const TWO_RUNTIMES: &str = "runtime: {mode: per_core, threads: 2}\n";
/// Hang guard: far beyond what any step takes.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// New connections opened at most before both listeners of a door must have taken one: the
/// kernel hashes each to one of two listeners, so all of them on one listener is a failure.
const CONNECTIONS_TO_REACH_BOTH: usize = 64;

/// Namespace `adv` allows `paths`, denies the rest.
fn allowing(paths: &[&str]) -> String {
    paths_policy("adv", "allow", "ALLOW", paths)
}

/// Connections `door` accepted on its listener `listener` (0 when none yet).
fn accepted(server: &Server, door: &str, listener: usize) -> f64 {
    server
        .metric(&format!(r#"portcullis_connections_accepted_total{{door="{door}",listener="{listener}"}}"#))
        .unwrap_or(0.0)
}

/// The names of the server's threads that run a check runtime.
fn check_threads(server: &Server) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).expect("the server's threads are listed");
    let mut names: Vec<String> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("checks-"))
        .collect();
    names.sort();
    names
}

/// The status of `/public/x` over the gRPC door, on a fresh connection.
async fn grpc_status(server: &Server) -> u16 {
    let request = CheckBuilder::new("GET", "/public/x").namespace("adv").build();
    proxy_answer(&server.check(request).await).0
}

/// The status of `/public/x` over the HTTP door, on a fresh connection.
fn http_status(server: &Server) -> u16 {
    http_request(server.http, "GET", "/public/x", &[("x-portcullis-context", "namespace=adv")]).0
}

/// Sends requests, each on a new connection, until both listeners of `door` have accepted one
/// since `before`; every answer must be `expected`.
async fn reach_both_listeners(server: &Server, door: &str, before: [f64; 2], expected: u16) {
    for _ in 0..CONNECTIONS_TO_REACH_BOTH {
        let status = if door == "grpc" { grpc_status(server).await } else { http_status(server) };
        assert_eq!(status, expected, "a {door} check");
        if before.iter().enumerate().all(|(listener, before)| accepted(server, door, listener) > *before) {
            return;
        }
    }
    panic!("{CONNECTIONS_TO_REACH_BOTH} {door} connections, all on one listener: {before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_each_answer_both_doors_on_their_own_listeners_reload_and_stop_cleanly() {
    let policies = policy_dir(&allowing(&["/public/*"]));
    let server = Server::with_http_door(policies.path(), "envoy", TWO_RUNTIMES);
    server.wait_until_logged(&["Serving checks", "per_core", "threads=2"]);
    eventually("two check runtimes, each on a thread of its own", async || {
        check_threads(&server) == ["checks-0", "checks-1"]
    })
    .await;
    for door in ["grpc", "http"] {
        reach_both_listeners(&server, door, [0.0; 2], 200).await;
    }

    std::fs::write(policies.path().join("policies.yaml"), allowing(&["/other/*"])).expect("new policies");
    server.signal("-HUP");
    server.wait_until_logged(&["Reloaded the policy set", "generation=2"]);
    // One policy set for every runtime: each listener's connections see the new one.
    for door in ["grpc", "http"] {
        let before = [accepted(&server, door, 0), accepted(&server, door, 1)];
        reach_both_listeners(&server, door, before, 403).await;
    }

    let status = server.terminate_within(HANG_GUARD);
    assert_eq!(status.code(), Some(0), "a clean stop once every runtime drained");
}

/// A connection to the HTTP door that sends a forward-auth request and reads its answer without
/// blocking.
struct Waiting {
    stream: TcpStream,
    answer: Vec<u8>,
    /// How the connection ended before a whole answer head arrived: reset, or closed.
    lost: Option<String>,
}

impl Waiting {
    /// A connection whose request is sent.
    fn open(address: SocketAddr) -> Self {
        let mut waiting = Self::connect(address);
        waiting.send();
        assert_eq!(waiting.lost, None, "the request is sent (it may wait to be served)");
        waiting
    }

    /// A connection that has sent nothing yet: the handshake is done, accepted or not.
    fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connects");
        Self { stream, answer: Vec::new(), lost: None }
    }

    /// Sends the request (a connection already reset records it), then reads without blocking.
    fn send(&mut self) {
        let request = "GET /public/x HTTP/1.1\r\nHost: app.test\r\nx-portcullis-context: namespace=adv\r\n\r\n";
        if let Err(error) = self.stream.write_all(request.as_bytes()) {
            self.lost = Some(format!("sending the request: {error}"));
        }
        self.stream.set_nonblocking(true).expect("non-blocking");
    }

    /// Whether a whole answer head has arrived; reads what is there. Fails on a reset.
    fn is_answered(&mut self) -> bool {
        self.read();
        if let Some(lost) = &self.lost {
            panic!("reading an answer: {lost}");
        }
        self.has_answer_head()
    }

    /// Whether the connection has its answer head or ended without it; reads what is there.
    fn is_settled(&mut self) -> bool {
        self.read();
        self.lost.is_some() || self.has_answer_head()
    }

    fn read(&mut self) {
        let mut buffer = [0_u8; 1024];
        while self.lost.is_none() {
            match self.stream.read(&mut buffer) {
                Ok(0) if !self.has_answer_head() => self.lost = Some("closed without an answer".into()),
                Ok(0) => break,
                Ok(read) => self.answer.extend(buffer.iter().take(read)),
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => self.lost = Some(format!("reading an answer: {error}")),
            }
        }
    }

    fn has_answer_head(&self) -> bool {
        self.answer.windows(4).any(|window| window == b"\r\n\r\n")
    }
}

/// Waits until `holds` (a hang guard, not a timing assertion).
fn wait_until(why: &str, mut holds: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !holds() {
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_connection_limit_holds_over_both_runtimes_together() {
    let policies = policy_dir(&allowing(&["/public/*"]));
    let settings = format!("{TWO_RUNTIMES}http_max_connections: 1\nhttp_header_read_timeout_ms: 60000\n");
    let server = Server::with_http_door(policies.path(), "envoy", &settings);
    let mut served = Waiting::open(server.http);
    wait_until("the first connection is never served", || served.is_answered());
    // The first connection holds the only slot. Each listener accepts one more and holds it
    // unserved; the rest wait in the backlogs. With a slot per runtime, the other listener's
    // connection would be served.
    let mut waiting: Vec<Waiting> = (0..CONNECTIONS_TO_REACH_BOTH).map(|_| Waiting::open(server.http)).collect();
    let deadline = Instant::now() + HANG_GUARD;
    while accepted(&server, "http", 0) + accepted(&server, "http", 1) < 3.0 {
        assert!(Instant::now() < deadline, "the listeners did not accept a connection each");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!((0..2).all(|listener| accepted(&server, "http", listener) >= 1.0));
    // Not a timing assertion on the server: a connection served in this while would have
    // been answered in a few milliseconds.
    std::thread::sleep(Duration::from_millis(300));
    let answered = waiting.iter_mut().map(Waiting::is_answered).filter(|answered| *answered).count();
    assert_eq!(answered, 0, "a connection was served while the only slot was taken");

    drop(served);
    let deadline = Instant::now() + HANG_GUARD;
    let next = loop {
        if let Some(next) = waiting.iter_mut().position(|connection| connection.is_answered()) {
            break next;
        }
        assert!(Instant::now() < deadline, "no waiting connection was served once the first closed");
        std::thread::sleep(Duration::from_millis(10));
    };
    let head = String::from_utf8_lossy(&waiting[next].answer).to_string();
    assert_eq!(status_in(&head), 200, "{head}");
    std::thread::sleep(Duration::from_millis(300));
    let answered = waiting.iter_mut().map(Waiting::is_answered).filter(|answered| *answered).count();
    assert_eq!(answered, 1, "one slot, one connection served");
}

/// Connections waiting in the HTTP door's listen backlogs when SIGTERM comes, their requests sent
/// only after shutdown started, are each answered: none is reset. The accept loops are held, not
/// raced: one connection holds the only slot, each accept loop holds one more, waiting for it,
/// and every other connection stays in a backlog, accepted by nobody, until shutdown.
fn sigterm_answers_every_connection_queued_in_the_backlogs(runtime: &str, listeners: f64) {
    let policies = policy_dir(&allowing(&["/public/*"]));
    let settings =
        format!("{runtime}http_max_connections: 1\nhttp_header_read_timeout_ms: 60000\ndrain_timeout_secs: 60\n");
    let server = Server::with_http_door(policies.path(), "envoy", &settings);
    let mut served = Waiting::open(server.http);
    wait_until("the first connection is never served", || served.is_answered());
    let mut queued: Vec<Waiting> = (0..CONNECTIONS_TO_REACH_BOTH).map(|_| Waiting::connect(server.http)).collect();
    let accepted_by_all = || (0..2).map(|listener| accepted(&server, "http", listener)).sum::<f64>();
    wait_until("each accept loop takes a connection", || accepted_by_all() >= 1.0 + listeners);
    assert_eq!(accepted_by_all(), 1.0 + listeners, "an accept loop took a second connection without a slot");

    server.signal("-TERM");
    server.wait_until_logged(&["Shutting down"]);
    for connection in &mut queued {
        connection.send();
    }
    wait_until("a queued connection is neither answered nor closed", || queued.iter_mut().all(Waiting::is_settled));
    let lost: Vec<&String> = queued.iter().filter_map(|connection| connection.lost.as_ref()).collect();
    assert!(lost.is_empty(), "{} of {} queued connections lost: {lost:?}", lost.len(), queued.len());
    for connection in &queued {
        let head = String::from_utf8_lossy(&connection.answer).to_string();
        assert_eq!(status_in(&head), 200, "{head}");
    }
    assert_eq!(server.wait_for_exit().code(), Some(0), "a clean stop once every queued connection was served");
}

#[test]
fn sigterm_answers_every_connection_queued_in_the_backlogs_of_two_runtimes() {
    sigterm_answers_every_connection_queued_in_the_backlogs(TWO_RUNTIMES, 2.0);
}

#[test]
fn sigterm_answers_every_connection_queued_in_the_backlog_of_the_multi_thread_runtime() {
    sigterm_answers_every_connection_queued_in_the_backlogs("runtime: {mode: multi_thread, threads: 2}\n", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_and_no_mode_serve_checks_on_a_current_thread_runtime_of_their_own() {
    let policies = policy_dir(&allowing(&["/public/*"]));
    let server = Server::with_http_door(policies.path(), "envoy", "runtime: {threads: 1}\n");
    server.wait_until_logged(&["Serving checks", "per_core", "auto: one thread", "threads=1"]);
    eventually("the check runtime on a thread of its own", async || check_threads(&server) == ["checks-0"]).await;
    assert_eq!(grpc_status(&server).await, 200);
    assert_eq!(http_status(&server), 200);
    assert!(accepted(&server, "grpc", 0) >= 1.0 && accepted(&server, "http", 0) >= 1.0);
    assert_eq!(server.terminate_within(HANG_GUARD).code(), Some(0));
}
