"""Same engine, same decision: every request of the shared table through the gRPC Check door and the HTTP door.

The HTTP door is asked the way each proxy asks it: Envoy's HTTP service (the request itself,
the workload in x-portcullis-context), nginx auth_request (X-Original-URI/-Method), Traefik
forwardAuth (X-Forwarded-*) and ingress-nginx (X-Original-URL); in the forwarded modes, the
auth request's own query string names the workload. The gRPC door gets the CheckRequest
Envoy would send, with per-route context_extensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from check_requests import JOB_SERVICE, http_check
from harness import http_get, send
from request_table import BLOCKED_SOURCE, CASES, HOST, PATH_PREFIX, RBAC_DENIED, SOURCE_CHECK_HOST, Case, ids

CONTEXT_QUERY = "/?namespace=job-service&app=job-service"
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"


@dataclass(frozen=True)
class Outcome:
    """What a proxy does with portcullis's answer: pass or refuse, and with what."""

    status: int
    body: str
    challenge: str  # www-authenticate, "" when none
    headers_to_set: tuple[tuple[str, str], ...]
    headers_to_remove: frozenset[str]


def grpc_outcome(authz, case: Case, token: str | None) -> Outcome:
    request = http_check(case.method, case.path, JOB_SERVICE, authority=HOST)
    if token:
        request.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    response = authz.Check(request, timeout=5)
    if response.status.code == 0:
        ok = response.ok_response
        to_set = tuple(sorted((option.header.key, option.header.value) for option in ok.headers))
        return Outcome(200, "", "", to_set, frozenset(ok.headers_to_remove))
    denied = response.denied_response
    headers = {option.header.key: option.header.value for option in denied.headers}
    return Outcome(denied.status.code, denied.body, headers.get("www-authenticate", ""), (), frozenset())


def http_outcome(port: int, method: str, target: str, headers: dict[str, str]) -> Outcome:
    answer = send(port, method, target, headers)
    if answer.status == 200:
        assert answer.body == b""
        removed = frozenset(name for name in answer.headers.get(HEADERS_TO_REMOVE, "").split(",") if name)
        to_set = tuple(sorted((name, value) for name, value in answer.headers.items() if name.startswith("x-") and name != HEADERS_TO_REMOVE))
        return Outcome(200, "", "", to_set, removed)
    return Outcome(answer.status, answer.text, answer.headers.get("www-authenticate", ""), (), frozenset())


# How each proxy asks the HTTP door about a request: (method, target, headers) of the auth request.


def envoy_http_service(case: Case) -> tuple[str, str, dict[str, str]]:
    return case.method, case.path, {"host": HOST, "x-portcullis-context": "namespace=job-service,app=job-service"}


def nginx_auth_request(case: Case) -> tuple[str, str, dict[str, str]]:
    return "GET", CONTEXT_QUERY, {"host": HOST, "x-original-uri": case.path, "x-original-method": case.method}


def traefik_forward_auth(case: Case) -> tuple[str, str, dict[str, str]]:
    headers = {"x-forwarded-method": case.method, "x-forwarded-proto": "http", "x-forwarded-host": HOST, "x-forwarded-uri": case.path}
    return "GET", CONTEXT_QUERY, {"host": "portcullis:8000", **headers}


def ingress_nginx(case: Case) -> tuple[str, str, dict[str, str]]:
    return "GET", CONTEXT_QUERY, {"host": "portcullis:8000", "x-original-url": f"http://{HOST}{case.path}", "x-original-method": case.method}


MODES = {
    "envoy-http": envoy_http_service,
    "nginx": nginx_auth_request,
    "traefik": traefik_forward_auth,
    "ingress-nginx": ingress_nginx,
}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_http_door_decides_as_the_grpc_door(door, authz, tokens, case, mode):
    token = tokens[case.token] if case.token else None
    expected = grpc_outcome(authz, case, token)
    method, target, headers = mode(case)
    if token:
        headers["authorization"] = f"Bearer {token}"
    assert http_outcome(door.http_port, method, target, headers) == expected
    # ... and both are the decision the table states.
    assert (expected.status, expected.body) == (case.status, case.body)


def test_allow_carries_identity_and_removal_list(door, tokens):
    """One allow spelled out: what Traefik, nginx and Envoy pick up from the 200."""
    token = tokens["alice"]
    method, target, headers = nginx_auth_request(Case("alice POST", "POST", "/api/jobs", 200))
    answer = send(door.http_port, method, target, {**headers, "authorization": f"Bearer {token}"})
    assert (answer.status, answer.body) == (200, b"")
    assert answer.headers["x-user"] == "alice"
    assert answer.headers["x-jwt-payload"] == token.split(".")[1]
    assert "authorization" in answer.headers[HEADERS_TO_REMOVE].split(",")


SPOOFED_NGINX_VIEW = {"x-original-uri": "/debug/x", "x-original-method": "GET"}


def test_forwarding_headers_count_from_trusted_peers(door):
    """From a loopback peer (trusted by default), the door judges the request the headers describe."""
    answer = send(door.http_port, "GET", "/api/jobs", {"host": HOST, **SPOOFED_NGINX_VIEW})
    assert (answer.status, answer.text) == (403, RBAC_DENIED)


def test_forwarding_headers_count_for_nothing_from_other_peers(untrusting_door):
    """With loopback not in trusted_proxies, the same request is judged as it arrived: GET /api/jobs.

    Neither its forwarding headers nor x-portcullis-context count: its host names a workload
    in a namespace without policies, so only the mesh-wide policies apply, and they deny
    /debug/* only (job-service's, had the context counted, would deny the anonymous POST).
    """
    answer = send(untrusting_door.http_port, "GET", "/api/jobs", {"host": HOST, **SPOOFED_NGINX_VIEW})
    assert (answer.status, answer.body) == (200, b"")
    context = {"host": HOST, "x-portcullis-context": "namespace=job-service,app=job-service"}
    assert send(untrusting_door.http_port, "POST", "/api/jobs", context).status == 200
    # It still decides: the mesh-wide DENY holds for what it judges.
    assert send(untrusting_door.http_port, "GET", "/debug/x", {"host": HOST, "x-original-uri": "/api/jobs"}).status == 403


@pytest.mark.parametrize(
    ("forwarded_for", "status"),
    [(BLOCKED_SOURCE, 403), (f"203.0.113.9, {BLOCKED_SOURCE}", 403), (f"{BLOCKED_SOURCE}, 203.0.113.9", 200), (None, 200)],
    ids=["the client", "right-most entry", "not right-most", "no header: the peer"],
)
def test_source_address_is_the_right_most_forwarded_entry_from_trusted_peers(door, forwarded_for, status):
    headers = {"host": HOST, "x-portcullis-context": "namespace=source-check"}
    headers.update({"x-forwarded-for": forwarded_for} if forwarded_for else {})
    assert send(door.http_port, "GET", "/", headers).status == status


def test_forwarded_for_from_other_peers_is_not_the_source(untrusting_door):
    headers = {"host": SOURCE_CHECK_HOST, "x-forwarded-for": BLOCKED_SOURCE}
    assert send(untrusting_door.http_port, "GET", "/", headers).status == 200
    # The workload's policy does apply there (its table names the host): its path rule holds.
    assert send(untrusting_door.http_port, "GET", "/blocked", headers).status == 403


@pytest.mark.parametrize(
    ("path", "status"),
    [(f"{PATH_PREFIX}/debug/x", 403), (f"{PATH_PREFIX}/api/jobs", 200), (f"{PATH_PREFIX}x/debug/x", 200), ("/debug/x", 403)],
    ids=["prefix stripped", "allowed under the prefix", "not a prefix segment", "no prefix"],
)
def test_http_path_prefix_is_stripped_in_the_direct_mode(untrusting_door, path, status):
    """Only the mesh-wide DENY of /debug/* applies here: a 403 shows the path that was judged."""
    answer = send(untrusting_door.http_port, "GET", path, {"host": HOST})
    assert (answer.status, answer.text) == (status, RBAC_DENIED if status == 403 else "")


def _http_checks(door) -> float:
    status, body, _ = http_get(door.admin_url("/metrics"))
    assert status == 200
    lines = [line for line in body.decode().splitlines() if line.startswith("portcullis_checks_total{") and 'door="http"' in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_http_door_checks_are_counted(door):
    before = _http_checks(door)
    for _ in range(3):
        send(door.http_port, "GET", "/api/jobs", {"host": HOST, "x-portcullis-context": "namespace=job-service,app=job-service"})
    assert _http_checks(door) == before + 3
