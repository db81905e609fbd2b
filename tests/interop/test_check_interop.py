"""Interop: portcullis answers Envoy's v3 Authorization/Check, driven by stubs built from Envoy's own protos."""

from __future__ import annotations

import pytest
from check_requests import (
    BAD_REQUEST,
    CALLER_ALLOWED,
    DEBUG_DENIED,
    JOB_SERVICE,
    JOB_SERVICE_ID,
    JOB_SERVICE_ID_OTHER_TRUST_DOMAIN,
    NO_ALLOW_MATCH,
    NO_POLICIES,
    NOTIFICATION_ID,
    NOTIFICATION_SERVICE,
    READ_ALLOWED,
    STRANGER_ID,
    UNPROTECTED,
    assert_verdict,
    http_check,
    tcp_check,
)
from grpc_health.v1 import health_pb2

CHECK_TIMEOUT_S = 5
HTTP_OK = 200
JOB_SERVICE_LABELS = {"app": "job-service"}
NOTIFICATION_LABELS = {"app": "job-notification-service"}
OTHER_ID, OTHER_LABELS = "spiffe://cluster.local/ns/other/sa/default", {"app": "other"}
UNPROTECTED_NS = {"namespace": "other"}


def check(stub, request):
    return stub.Check(request, timeout=CHECK_TIMEOUT_S)


def table(cases: dict) -> list:
    """pytest params from {test id: (arguments...)}."""
    return [pytest.param(*arguments, id=name) for name, arguments in cases.items()]


JOB_BOARD_CASES = {
    "anonymous GET /api/jobs": ("GET", "/api/jobs", JOB_SERVICE, READ_ALLOWED),
    "query string ignored": ("GET", "/api/jobs?page=2", JOB_SERVICE, READ_ALLOWED),
    "GET job categories": ("GET", "/api/jobcategories/7", JOB_SERVICE, READ_ALLOWED),
    "anonymous POST /api/jobs": ("POST", "/api/jobs", JOB_SERVICE, NO_ALLOW_MATCH),
    "anonymous DELETE category": ("DELETE", "/api/jobcategories/7", JOB_SERVICE, NO_ALLOW_MATCH),
    "GET outside allowed paths": ("GET", "/", JOB_SERVICE, NO_ALLOW_MATCH),
    "namespace without policies": ("GET", "/api/jobs", UNPROTECTED, NO_POLICIES),
    "POST where no policy applies": ("POST", "/api/jobs", UNPROTECTED, NO_POLICIES),
    "selector does not match labels": ("POST", "/api/jobs", {"namespace": "job-service", "app": "billing"}, NO_POLICIES),
    "debug on job-service": ("GET", "/debug/pprof", JOB_SERVICE, DEBUG_DENIED),
    "debug on unprotected workload": ("GET", "/debug/pprof", UNPROTECTED, DEBUG_DENIED),
    "debug on notification service": ("GET", "/debug/pprof", NOTIFICATION_SERVICE, DEBUG_DENIED),
    "actuator, any method": ("POST", "/actuator/shutdown", UNPROTECTED, DEBUG_DENIED),
    "internal {**} template": ("GET", "/internal/a/b/c", UNPROTECTED, DEBUG_DENIED),
}


@pytest.mark.parametrize(("method", "path", "workload", "expected"), table(JOB_BOARD_CASES))
def test_job_board_policies(authz, method, path, workload, expected):
    assert_verdict(check(authz, http_check(method, path, workload)), expected)


# Paths judged after normalization. Each case but "merged inner slashes" would
# get another verdict if judged raw ("/api/jobs/../debug/x" starts with "/api/jobs").
NORMALIZED_PATH_CASES = {
    "dot-dot back to /api": ("/api/jobs/../debug/x", JOB_SERVICE, NO_ALLOW_MATCH),
    "encoded dot-dot back to /api": ("/api/jobs/%2e%2e/debug/x", JOB_SERVICE, NO_ALLOW_MATCH),
    "dot-dot up to /debug": ("/api/jobs/../../debug/x", JOB_SERVICE, DEBUG_DENIED),
    "encoded dot-dot up to /debug": ("/api/jobs/%2E%2E/%2e%2e/debug/x", JOB_SERVICE, DEBUG_DENIED),
    "backslashes": ("/api/jobs\\..\\..\\debug\\x", JOB_SERVICE, DEBUG_DENIED),
    "merged leading slashes": ("//debug/x", JOB_SERVICE, DEBUG_DENIED),
    "merged inner slashes": ("/api//debug/x", JOB_SERVICE, NO_ALLOW_MATCH),
    "merged into allowed path": ("/api//jobs", JOB_SERVICE, READ_ALLOWED),
    "encoded unreserved letter": ("/%64ebug/x", JOB_SERVICE, DEBUG_DENIED),
    "single dots and a decoy query": ("/api/jobs/./../../debug/x?next=/api/jobs", JOB_SERVICE, DEBUG_DENIED),
    "dot-dot where no allow policy": ("/api/jobs/../../debug/x", UNPROTECTED, DEBUG_DENIED),
    "normalized into allowed path": ("/api/x/../jobs", JOB_SERVICE, READ_ALLOWED),
    "encoded into allowed path": ("/api/%6aobs", JOB_SERVICE, READ_ALLOWED),
    "NUL byte": ("/api/jobs%00", JOB_SERVICE, BAD_REQUEST),
    "NUL byte on debug path": ("/debug/x%00", UNPROTECTED, BAD_REQUEST),
}


@pytest.mark.parametrize(("path", "workload", "expected"), table(NORMALIZED_PATH_CASES))
def test_paths_are_judged_normalized(authz, path, workload, expected):
    assert_verdict(check(authz, http_check("GET", path, workload)), expected)


NOTIFICATION_CALLER_CASES = {
    "job-service identity": (JOB_SERVICE_ID, "/api/notifications", CALLER_ALLOWED),
    "other identity": (STRANGER_ID, "/api/notifications", NO_ALLOW_MATCH),
    "no identity": ("", "/api/notifications", NO_ALLOW_MATCH),
    "other trust domain": (JOB_SERVICE_ID_OTHER_TRUST_DOMAIN, "/api/notifications", NO_ALLOW_MATCH),
    "deny beats allow": (JOB_SERVICE_ID, "/debug/vars", DEBUG_DENIED),
}


@pytest.mark.parametrize(("source", "path", "expected"), table(NOTIFICATION_CALLER_CASES))
def test_notification_service_callers(authz, source, path, expected):
    request = http_check("POST", path, NOTIFICATION_SERVICE, source_principal=source)
    assert_verdict(check(authz, request), expected)


# Workload from the destination principal and destination.labels, with or
# without context_extensions: (extensions, principal, labels, method, path, caller, verdict)
DESTINATION_CASES = {
    "job-service GET": ({}, JOB_SERVICE_ID, JOB_SERVICE_LABELS, "GET", "/api/jobs", "", READ_ALLOWED),
    "job-service POST": ({}, JOB_SERVICE_ID, JOB_SERVICE_LABELS, "POST", "/api/jobs", "", NO_ALLOW_MATCH),
    "labels not selected": ({}, JOB_SERVICE_ID, {"app": "billing"}, "POST", "/api/jobs", "", NO_POLICIES),
    "notification, no caller": ({}, NOTIFICATION_ID, NOTIFICATION_LABELS, "POST", "/notify", "", NO_ALLOW_MATCH),
    "notification, right caller": ({}, NOTIFICATION_ID, NOTIFICATION_LABELS, "POST", "/notify", JOB_SERVICE_ID, CALLER_ALLOWED),
    "extension namespace wins": (UNPROTECTED_NS, JOB_SERVICE_ID, JOB_SERVICE_LABELS, "POST", "/api/jobs", "", NO_POLICIES),
    "labels merged from both": ({"namespace": "job-service"}, "", JOB_SERVICE_LABELS, "POST", "/api/jobs", "", NO_ALLOW_MATCH),
}


@pytest.mark.parametrize(("extensions", "principal", "labels", "method", "path", "caller", "expected"), table(DESTINATION_CASES))
def test_workload_from_destination(authz, extensions, principal, labels, method, path, caller, expected):
    request = http_check(
        method, path, extensions, source_principal=caller, destination_principal=principal, destination_labels=labels
    )
    assert_verdict(check(authz, request), expected)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_request_shaped_like_envoy(authz, protocol):
    """Pseudo-headers in `headers`, query inside `path` and `:path`, as Envoy sends them."""
    read = http_check("GET", "/api/jobs?page=2&sort=desc", JOB_SERVICE, protocol=protocol)
    write = http_check("POST", "/api/jobs?page=2", JOB_SERVICE, protocol=protocol)
    assert read.attributes.request.http.headers[":path"] == "/api/jobs?page=2&sort=desc"
    assert_verdict(check(authz, read), READ_ALLOWED)
    assert_verdict(check(authz, write), NO_ALLOW_MATCH)


# TCP checks carry no request.http. The shipped mesh-wide DENY rule has only
# `paths` (an HTTP-only field), which counts as matching for TCP: like Istio,
# portcullis then denies every TCP connection, whatever the caller. Against a
# server without the mesh-wide policy, ALLOW rules that need HTTP fields never
# match, rules on peers alone do.
TCP_CASES = {
    "mesh policies, notification, right caller": ("authz", JOB_SERVICE_ID, NOTIFICATION_ID, NOTIFICATION_LABELS, DEBUG_DENIED),
    "mesh policies, unprotected workload": ("authz", STRANGER_ID, OTHER_ID, OTHER_LABELS, DEBUG_DENIED),
    "notification, right caller": ("authz_without_mesh_policies", JOB_SERVICE_ID, NOTIFICATION_ID, NOTIFICATION_LABELS, CALLER_ALLOWED),
    "notification, other caller": ("authz_without_mesh_policies", STRANGER_ID, NOTIFICATION_ID, NOTIFICATION_LABELS, NO_ALLOW_MATCH),
    "notification, no caller": ("authz_without_mesh_policies", "", NOTIFICATION_ID, NOTIFICATION_LABELS, NO_ALLOW_MATCH),
    "job-service, HTTP-only allow rules": ("authz_without_mesh_policies", STRANGER_ID, JOB_SERVICE_ID, JOB_SERVICE_LABELS, NO_ALLOW_MATCH),
    "unprotected workload": ("authz_without_mesh_policies", STRANGER_ID, OTHER_ID, OTHER_LABELS, NO_POLICIES),
}


@pytest.mark.parametrize(("server", "source", "destination", "labels", "expected"), table(TCP_CASES))
def test_tcp_checks_on_peers(request, server, source, destination, labels, expected):
    """`server`: the stub of the server with the shipped policies, or of the one without mesh-wide.yaml."""
    stub = request.getfixturevalue(server)
    tcp = tcp_check(source_principal=source, destination_principal=destination, destination_labels=labels)
    assert_verdict(check(stub, tcp), expected)


def test_tcp_check_with_context_extensions(authz_without_mesh_policies):
    request = tcp_check(source_principal=JOB_SERVICE_ID, workload=NOTIFICATION_SERVICE)
    assert_verdict(check(authz_without_mesh_policies, request), CALLER_ALLOWED)


def test_debug_allowed_without_mesh_policy(authz_without_mesh_policies):
    """Control: the /debug denials above come from mesh-wide.yaml, not from a built-in rule."""
    request = http_check("GET", "/debug/pprof", UNPROTECTED)
    assert_verdict(check(authz_without_mesh_policies, request), NO_POLICIES)


def test_grpc_health_serving(health):
    response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_admin_probes(portcullis, path):
    assert portcullis.admin_get(path)[0] == HTTP_OK


def test_admin_metrics_are_prometheus_text(portcullis, authz):
    check(authz, http_check("GET", "/api/jobs", JOB_SERVICE))
    status, body = portcullis.admin_get("/metrics")
    assert status == HTTP_OK
    assert any(line.startswith("# TYPE ") for line in body.decode().splitlines())
