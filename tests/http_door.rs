//! The HTTP forward-auth door over real sockets: each proxy's way of naming the original request, trust in forwarding headers, and connection bounds.

#![expect(clippy::expect_used, clippy::panic, reason = "test set-up: a failure to start or connect fails the test")]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{HTTP_DOOR_OFF, Server, http_get, http_request, paths_policy, policy_dir, repo_path, status_in};

const CONTEXT: &str = "?namespace=job-service&app=job-service";

/// A name, the dialect, the method and path of the request to the door, its headers, and the
/// expected status.
type Case<'a> = (&'a str, &'a str, &'a str, String, Vec<(&'a str, &'a str)>, u16);

#[test]
fn each_proxy_dialect_names_the_original_request() {
    let cases: Vec<Case> = vec![
        (
            "nginx auth_request, allowed read",
            "nginx",
            "GET",
            format!("/_auth{CONTEXT}"),
            vec![("X-Original-URI", "/api/jobs?page=1"), ("X-Original-Method", "GET")],
            200,
        ),
        (
            "nginx auth_request, anonymous write",
            "nginx",
            "GET",
            format!("/_auth{CONTEXT}"),
            vec![("X-Original-URI", "/api/jobs"), ("X-Original-Method", "POST")],
            403,
        ),
        (
            "Traefik forwardAuth, allowed read",
            "traefik",
            "GET",
            format!("/{CONTEXT}"),
            vec![
                ("X-Forwarded-Uri", "/api/jobcategories"),
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Host", "jobs.example.com"),
                ("X-Forwarded-Proto", "https"),
            ],
            200,
        ),
        (
            "Traefik forwardAuth, traversal to a denied path",
            "traefik",
            "GET",
            format!("/{CONTEXT}"),
            vec![("X-Forwarded-Uri", "/api/jobs/%2e%2e/%2e%2e/debug/x"), ("X-Forwarded-Method", "GET")],
            403,
        ),
        (
            "ingress-nginx, whole URL",
            "ingress-nginx",
            "GET",
            format!("/{CONTEXT}"),
            vec![("X-Original-URL", "https://jobs.example.com/api/jobs/7"), ("X-Original-Method", "DELETE")],
            403,
        ),
        (
            "Envoy HTTP mode, the request itself",
            "envoy",
            "GET",
            "/api/jobs".into(),
            vec![("x-portcullis-context", "namespace=job-service,app=job-service")],
            200,
        ),
        (
            "Envoy HTTP mode, a write",
            "envoy",
            "PATCH",
            "/api/jobs/1".into(),
            vec![("x-portcullis-context", "namespace=job-service,app=job-service")],
            403,
        ),
        (
            "a bad token",
            "nginx",
            "GET",
            format!("/{CONTEXT}"),
            vec![("X-Original-URI", "/api/jobs"), ("Authorization", "Bearer a.b")],
            401,
        ),
        ("an unsafe path", "nginx", "GET", format!("/{CONTEXT}"), vec![("X-Original-URI", "/api/jobs/%00")], 400),
    ];
    let mut failures = Vec::new();
    let policies = repo_path("policies");
    let servers: Vec<(&str, Server)> = ["nginx", "traefik", "ingress-nginx", "envoy"]
        .into_iter()
        .map(|mode| (mode, Server::with_http_door(&policies, mode, "")))
        .collect();
    let server_in = |mode: &str| servers.iter().find(|(name, _)| *name == mode).map(|(_, server)| server);
    for (name, mode, method, path, headers, expected) in &cases {
        let server = server_in(mode).expect("a server per dialect");
        let (status, head, body) = http_request(server.http, method, path, headers);
        if status != *expected {
            failures.push(format!("{name}: expected {expected}, got {status} {body:?}"));
        }
        if *expected == 403 && body != "RBAC: access denied" {
            failures.push(format!("{name}: body {body:?}"));
        }
        if *expected == 401 && !head.contains("www-authenticate: bearer realm=") {
            failures.push(format!("{name}: no www-authenticate in {head}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let nginx = server_in("nginx").expect("nginx");
    let (_, head, _) = http_request(nginx.http, "GET", &format!("/{CONTEXT}"), &[("X-Original-URI", "/api/jobs")]);
    assert!(head.contains("x-envoy-auth-headers-to-remove: x-jwt-payload,x-user,x-user-id"), "{head}");
    for (_, server) in servers {
        assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
    }
}

#[test]
fn forwarding_headers_from_untrusted_peers_are_ignored() {
    // The workloads table names the loopback host's workload, in a namespace without policies.
    let settings = "trusted_proxies: [10.0.0.0/8]\nworkloads: [{host: 127.0.0.1, namespace: elsewhere}]\n";
    let server = Server::with_http_door(&repo_path("policies"), "nginx", settings);
    // Loopback is not trusted now: the request is judged on its own path, not the one it claims.
    let (status, _, body) = http_request(server.http, "GET", "/debug/pprof", &[("X-Original-URI", "/api/jobs")]);
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let context = [("x-portcullis-context", "namespace=job-service,app=job-service")];
    let (status, _, _) = http_request(server.http, "PATCH", "/api/jobs/1", &context);
    assert_eq!(status, 200, "no context from an untrusted peer: job-service's policies do not apply");
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn a_request_without_its_context_query_is_denied_as_an_unknown_workload_counted_and_logged() {
    let server = Server::with_http_door(&repo_path("policies"), "nginx", "");
    let token = "header.payload.signature-not-to-be-logged";
    let bearer = format!("Bearer {token}");
    let forgotten_query =
        [("X-Original-URI", "/api/jobs"), ("X-Original-Method", "GET"), ("Authorization", bearer.as_str())];
    let (status, _, body) = http_request(server.http, "GET", "/_auth", &forgotten_query);
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let (status, _, _) = http_request(server.http, "GET", &format!("/_auth{CONTEXT}"), &forgotten_query[..2]);
    assert_eq!(status, 200, "with its context the same request is judged by its namespace's policies");

    let (_, metrics) = http_get(server.admin, "/metrics");
    for expected in [
        r#"portcullis_unidentified_workload_checks_total{door="http"} 1"#,
        r#"portcullis_checks_total{door="http",decision="deny",reason="unknown_workload"} 1"#,
    ] {
        assert!(metrics.lines().any(|line| line == expected), "missing `{expected}` in:\n{metrics}");
    }
    let warning = server.wait_for_log_line(&["WARN", "workload no source names"]);
    for field in
        ["door=\"http\"", "destination_principal=false", "reason=\"unknown_workload\"", "checks_since_last_line=1"]
    {
        assert!(warning.contains(field), "`{field}` missing from: {warning}");
    }
    assert!(!warning.contains(token), "the token leaked into: {warning}");
    let decision = server.wait_for_log_line(&["Decided", "reason=\"unknown_workload\""]);
    assert!(decision.contains("decision=\"deny\""), "{decision}");
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}

/// A DENY on `x-tenant: acme` and an ALLOW on it, in namespace `h`.
const TENANT_POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-acme, namespace: h}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/tenant]}}]
    when: [{key: \"request.headers[x-tenant]\", values: [acme]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: h}
spec:
  rules:
  - to: [{operation: {paths: [/tenant]}}]
  - to: [{operation: {paths: [/acme]}}]
    when: [{key: \"request.headers[x-tenant]\", values: [acme]}]
";

#[test]
fn each_value_of_a_repeated_header_is_judged_on_its_own() {
    let policies = tempfile::tempdir().expect("temp dir");
    std::fs::write(policies.path().join("tenant.yaml"), TENANT_POLICIES).expect("write");
    let server = Server::with_http_door(policies.path(), "envoy", "");
    let in_h = ("x-portcullis-context", "namespace=h");
    let status = |path: &str, tenants: &[&'static str]| {
        let mut headers = vec![in_h];
        headers.extend(tenants.iter().map(|&tenant| ("x-tenant", tenant)));
        http_request(server.http, "GET", path, &headers).0
    };
    assert_eq!(status("/tenant", &["other", "acme"]), 403, "a denied value after another is still denied");
    assert_eq!(status("/tenant", &["other", "more"]), 200);
    assert_eq!(status("/acme", &["acme", "acme"]), 200, "an allowed value sent twice is allowed");
    assert_eq!(status("/acme", &["other"]), 403);
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}

/// Namespace `adv` denies `/admin/*` and allows `/public/*`; namespace `open` has no policy.
fn steering_policies() -> tempfile::TempDir {
    policy_dir(
        &[
            paths_policy("adv", "deny-admin", "DENY", &["/admin", "/admin/*"]),
            paths_policy("adv", "allow-public", "ALLOW", &["/public/*"]),
        ]
        .join("---\n"),
    )
}

/// Each proxy's auth request for `GET /admin/users` in namespace `adv`, with a client's copies
/// of the other dialects' headers naming `/public/x`.
fn steered_request(mode: &str) -> (String, Vec<(&'static str, &'static str)>) {
    let client_copies = [
        ("X-Original-URL", "http://app.test/public/x"),
        ("X-Original-URI", "/public/x"),
        ("X-Forwarded-Uri", "/public/x"),
    ];
    let (target, proxy_headers): (&str, Vec<(&str, &str)>) = match mode {
        "envoy" => ("/admin/users", vec![("x-portcullis-context", "namespace=adv")]),
        "nginx" => ("/_auth?namespace=adv", vec![("X-Original-URI", "/admin/users")]),
        "traefik" => ("/?namespace=adv", vec![("X-Forwarded-Uri", "/admin/users")]),
        _ => ("/?namespace=adv", vec![("X-Original-URL", "http://app.test/admin/users")]),
    };
    let proxy_names: Vec<String> = proxy_headers.iter().map(|(name, _)| name.to_ascii_lowercase()).collect();
    let copies = client_copies.into_iter().filter(|(name, _)| !proxy_names.contains(&name.to_ascii_lowercase()));
    (target.to_string(), proxy_headers.into_iter().chain(copies).collect())
}

#[test]
fn with_default_settings_the_http_door_is_off_so_no_client_header_can_steer_it() {
    let policies = steering_policies();
    let server = Server::start(&[policies.path()]);
    assert_eq!(server.http, HTTP_DOOR_OFF, "the door is not served without http_mode");
    let log = server.log_lines();
    assert!(log.iter().any(|line| line.contains("HTTP door off") && line.contains("http_mode")), "{log:?}");
    assert!(!log.iter().any(|line| line.contains("door=http")), "{log:?}");
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn client_copies_of_other_dialects_headers_do_not_steer_any_explicit_mode() {
    let policies = steering_policies();
    let mut failures = Vec::new();
    for mode in ["envoy", "nginx", "traefik", "ingress-nginx"] {
        let server = Server::with_http_door(policies.path(), mode, "");
        let (target, headers) = steered_request(mode);
        let (status, _, _) = http_request(server.http, "GET", &target, &headers);
        if status != 403 {
            failures.push(format!("{mode}: GET /admin/users with client copies naming /public/x got {status}"));
        }
        let log = server.log_lines();
        if log.iter().any(|line| line.contains("auto") && line.contains("http_mode")) {
            failures.push(format!("{mode}: warned about auto: {log:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn explicit_auto_mode_is_served_with_a_warning_that_it_can_be_steered() {
    let policies = steering_policies();
    let server = Server::with_http_door(policies.path(), "auto", "");
    server.wait_until_logged(&["WARN", "`auto`"]);
    let (status, _, _) = http_request(server.http, "GET", "/public/x", &[("x-portcullis-context", "namespace=adv")]);
    assert_eq!(status, 200);
}

#[test]
fn duplicate_context_keys_in_the_header_or_the_query_are_denied_as_malformed() {
    let policies = steering_policies();
    let envoy = Server::with_http_door(policies.path(), "envoy", "");
    let nginx = Server::with_http_door(policies.path(), "nginx", "");
    // Each namespace alone allows the request; named twice, neither is taken.
    for namespace in ["adv", "open"] {
        let context = format!("namespace={namespace}");
        let (status, _, _) = http_request(envoy.http, "GET", "/public/x", &[("x-portcullis-context", &context)]);
        assert_eq!(status, 200, "header {context}");
        let target = format!("/_auth?{context}");
        let (status, _, _) = http_request(nginx.http, "GET", &target, &[("X-Original-URI", "/public/x")]);
        assert_eq!(status, 200, "query {context}");
    }
    let header_cases: [&[(&str, &str)]; 3] = [
        &[("x-portcullis-context", "namespace=adv,namespace=open")],
        &[("x-portcullis-context", "namespace=open, app=web , namespace=adv")],
        &[("x-portcullis-context", "namespace=adv"), ("x-portcullis-context", "namespace=open")],
    ];
    let mut failures = Vec::new();
    for headers in header_cases {
        let (status, _, body) = http_request(envoy.http, "GET", "/public/x", headers);
        if (status, body.as_str()) != (403, "RBAC: access denied") {
            failures.push(format!("header {headers:?}: {status} {body:?}"));
        }
    }
    for query in ["namespace=adv&namespace=open", "namespace=open&app=web&namespace=adv"] {
        let (status, _, body) =
            http_request(nginx.http, "GET", &format!("/_auth?{query}"), &[("X-Original-URI", "/public/x")]);
        if (status, body.as_str()) != (403, "RBAC: access denied") {
            failures.push(format!("query {query}: {status} {body:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (_, metrics) = support::http_get(envoy.admin, "/metrics");
    assert!(metrics.contains("reason=\"malformed_request\""), "{metrics}");
}

/// Hang guard for the connection tests: far beyond every timeout they configure.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connects");
    stream.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
    stream
}

/// Whether the server closed the connection: a read sees the end, or the reset.
fn is_closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0_u8; 1024];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted),
    }
}

/// Sends one keep-alive request and reads its whole answer (the door's answers to an allow
/// have an empty body); the status.
fn keep_alive_request(stream: &mut TcpStream, address: SocketAddr) -> u16 {
    let request = format!("GET /public/x HTTP/1.1\r\nHost: {address}\r\nx-portcullis-context: namespace=adv\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("request sent");
    let deadline = Instant::now() + HANG_GUARD;
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no answer in {HANG_GUARD:?}");
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("reading the answer: {error}"),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.to_ascii_lowercase().contains("content-length: 0"), "{head}");
    status_in(&head)
}

#[test]
fn a_client_sending_its_head_one_byte_at_a_time_is_disconnected_after_the_header_read_timeout() {
    let policies = steering_policies();
    let server = Server::with_http_door(policies.path(), "envoy", "http_header_read_timeout_ms: 300\n");
    let head = format!("GET /public/x HTTP/1.1\r\nHost: app.test\r\nx-slow: {}", "a".repeat(100_000));
    // A client that trickles its head, and one that sends nothing at all.
    for trickle in [true, false] {
        let mut stream = connect(server.http);
        let deadline = Instant::now() + HANG_GUARD;
        let mut bytes = head.bytes();
        loop {
            assert!(Instant::now() < deadline, "trickle {trickle}: still connected after {HANG_GUARD:?}");
            if trickle
                && let Some(byte) = bytes.next()
                && stream.write_all(&[byte]).is_err()
            {
                break;
            }
            if is_closed_by_server(&mut stream) {
                break;
            }
        }
    }
    // The door still serves clients that send their request at once.
    let (status, _, _) = http_request(server.http, "GET", "/public/x", &[("x-portcullis-context", "namespace=adv")]);
    assert_eq!(status, 200);
}

/// The idle timeout counts from the last request: a connection sending one every 300 ms for
/// 2.4 s, more than twice the 1 s timeout, stays open; once it falls silent, it is closed.
#[test]
fn a_keep_alive_connection_is_closed_once_idle_for_the_idle_timeout_and_not_while_busy() {
    let policies = steering_policies();
    let settings = "http_idle_timeout_secs: 1\nhttp_header_read_timeout_ms: 60000\n";
    let server = Server::with_http_door(policies.path(), "envoy", settings);
    let mut stream = connect(server.http);
    for request in 0..8 {
        assert_eq!(keep_alive_request(&mut stream, server.http), 200, "request {request} on the same connection");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + HANG_GUARD;
    while !is_closed_by_server(&mut stream) {
        assert!(Instant::now() < deadline, "an idle connection still open after {HANG_GUARD:?}");
    }
}

#[test]
fn connections_over_the_limit_wait_until_one_closes() {
    let policies = steering_policies();
    let settings = "http_max_connections: 2\nhttp_header_read_timeout_ms: 60000\nhttp_idle_timeout_secs: 60\n";
    let server = Server::with_http_door(policies.path(), "envoy", settings);
    let mut first = connect(server.http);
    let mut second = connect(server.http);
    assert_eq!(keep_alive_request(&mut first, server.http), 200);
    assert_eq!(keep_alive_request(&mut second, server.http), 200);
    let mut third = connect(server.http);
    let request = b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nx-portcullis-context: namespace=adv\r\n\r\n";
    third.write_all(request).expect("the third request is sent (it waits in the backlog)");
    let mut buffer = [0_u8; 256];
    third.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
    match third.read(&mut buffer) {
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the third connection was served while two were open: {other:?}"),
    }
    drop(first);
    third.set_read_timeout(Some(HANG_GUARD)).expect("read timeout");
    let read = third.read(&mut buffer).expect("the third connection is served once the first closes");
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buffer[..read]));
    assert_eq!(keep_alive_request(&mut second, server.http), 200, "the second is still served");
}
