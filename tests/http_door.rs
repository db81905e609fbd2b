//! The HTTP forward-auth door over real sockets: each proxy's way of naming the original request, and trust in forwarding headers.

mod support;

use support::{Server, http_get, http_request, repo_path};

const CONTEXT: &str = "?namespace=job-service&app=job-service";

/// A name, the method and path of the request to the door, its headers, and the expected status.
type Case<'a> = (&'a str, &'a str, String, Vec<(&'a str, &'a str)>, u16);

#[test]
fn each_proxy_dialect_names_the_original_request() {
    let server = Server::start(&[&repo_path("policies")]);
    let cases: Vec<Case> = vec![
        (
            "nginx auth_request, allowed read",
            "GET",
            format!("/_auth{CONTEXT}"),
            vec![("X-Original-URI", "/api/jobs?page=1"), ("X-Original-Method", "GET")],
            200,
        ),
        (
            "nginx auth_request, anonymous write",
            "GET",
            format!("/_auth{CONTEXT}"),
            vec![("X-Original-URI", "/api/jobs"), ("X-Original-Method", "POST")],
            403,
        ),
        (
            "Traefik forwardAuth, allowed read",
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
            "GET",
            format!("/{CONTEXT}"),
            vec![("X-Forwarded-Uri", "/api/jobs/%2e%2e/%2e%2e/debug/x"), ("X-Forwarded-Method", "GET")],
            403,
        ),
        (
            "ingress-nginx, whole URL",
            "GET",
            format!("/{CONTEXT}"),
            vec![("X-Original-URL", "https://jobs.example.com/api/jobs/7"), ("X-Original-Method", "DELETE")],
            403,
        ),
        (
            "Envoy HTTP mode, the request itself",
            "GET",
            "/api/jobs".into(),
            vec![("x-portcullis-context", "namespace=job-service,app=job-service")],
            200,
        ),
        (
            "Envoy HTTP mode, a write",
            "PATCH",
            "/api/jobs/1".into(),
            vec![("x-portcullis-context", "namespace=job-service,app=job-service")],
            403,
        ),
        (
            "a bad token",
            "GET",
            format!("/{CONTEXT}"),
            vec![("X-Original-URI", "/api/jobs"), ("Authorization", "Bearer a.b")],
            401,
        ),
        ("an unsafe path", "GET", format!("/{CONTEXT}"), vec![("X-Original-URI", "/api/jobs/%00")], 400),
    ];
    let mut failures = Vec::new();
    for (name, method, path, headers, expected) in &cases {
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
    let (_, head, _) = http_request(server.http, "GET", &format!("/{CONTEXT}"), &[("X-Original-URI", "/api/jobs")]);
    assert!(head.contains("x-envoy-auth-headers-to-remove: x-jwt-payload,x-user,x-user-id"), "{head}");
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let config = tempfile::NamedTempFile::new().expect("temp file");
    // The workloads table names the loopback host's workload, in a namespace without policies.
    std::fs::write(
        config.path(),
        "trusted_proxies: [10.0.0.0/8]\nworkloads: [{host: 127.0.0.1, namespace: elsewhere}]\n",
    )
    .expect("write");
    let server = Server::start_with(&[&repo_path("policies")], Some(config.path()));
    // Loopback is not trusted now: the request is judged on its own path, not the one it claims.
    let (status, _, body) = http_request(server.http, "GET", "/debug/pprof", &[("X-Original-URI", "/api/jobs")]);
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let context = [("x-portcullis-context", "namespace=job-service,app=job-service")];
    let (status, _, _) = http_request(server.http, "PATCH", "/api/jobs/1", &context);
    assert_eq!(status, 200, "no context from an untrusted peer: job-service's policies do not apply");
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn a_request_without_its_context_query_is_denied_as_an_unknown_workload_counted_and_logged() {
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config.path(), "http_mode: nginx\n").expect("write");
    let server = Server::start_with(&[&repo_path("policies")], Some(config.path()));
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
    assert_eq!(server.terminate().code(), Some(0));
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
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config.path(), "http_mode: envoy\n").expect("write");
    let server = Server::start_with(&[policies.path()], Some(config.path()));
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
    assert_eq!(server.terminate().code(), Some(0));
}
