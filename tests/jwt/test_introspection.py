"""Opaque tokens checked by a real provider's introspection endpoint (tests/oidc/idp.mjs, RFC 7662).

The IdP's `jobs-bot` client gets opaque access tokens by the client-credentials grant; portcullis
introspects them as `portcullis-introspect`. The policy allows `GET /api/reports` to the bot as
`<issuer>/jobs-bot` holding the scope `jobs:read`. Calls to the endpoint are counted by the
server's own metrics.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import free_port
from jwt_checks import assert_allowed, assert_invalid_token, assert_rbac_denied, ask
from jwt_policies import idp_rule, request_authentication

TOKEN_INACTIVE = "Token is not active"
INTROSPECTION_FAILED = "Token introspection failed"
REPORTS = "/api/reports"
REVOCATION_DEADLINE_S = 15.0  # a hang guard: the cache bound is 1 s


def reports_policy(issuer: str) -> dict:
    """GET /api/reports* for the bot as `<issuer>/jobs-bot`, when its scope holds `jobs:read`."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "reports", "namespace": "job-service"},
        "spec": {
            "selector": {"matchLabels": {"app": "job-service"}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"requestPrincipals": [f"{issuer}/jobs-bot"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": [f"{REPORTS}*"]}}],
                    "when": [{"key": "request.auth.claims[scope]", "values": ["jobs:read"]}],
                }
            ],
        },
    }


def settings(secret_file, provider: dict) -> str:
    block = {"issuer": "", "client_id": "portcullis-introspect", "client_secret_file": str(secret_file), **provider}
    return json.dumps({"introspection": {"providers": [block]}})


def bot_token(idp, scope: str = "jobs:read") -> str:
    """An opaque access token of `jobs-bot` (client credentials)."""
    return _bot_call(idp, "token", {"grant_type": "client_credentials", "scope": scope})["access_token"]


def revoke(idp, token: str) -> None:
    _bot_call(idp, "revoke", {"token": token})


def _bot_call(idp, endpoint: str, form: dict) -> dict:
    request = urllib.request.Request(f"{idp.issuer}/protocol/openid-connect/{endpoint}", data=urllib.parse.urlencode(form).encode())
    request.add_header("authorization", "Basic " + base64.b64encode(b"jobs-bot:bot-secret").decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"{}")


def counter(server, name: str, result: str | None = None) -> float:
    """A counter's value on the server's /metrics (0 when it has no series yet)."""
    status, body = server.server.admin_get("/metrics")
    assert status == 200
    labels = "" if result is None else f'{{result="{result}"}}'
    match = re.search(rf"^portcullis_{name}_total{re.escape(labels)} (\S+)$", body.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("introspection") / "client-secret"
    path.write_text("introspect-secret\n")
    return path


@pytest.fixture(scope="module")
def introspecting_server(launch_jwt_server, idp, secret_file):
    """The endpoint found by discovery, client_secret_basic, answers remembered 60 s; the IdP's JWT rule too."""
    documents = (request_authentication([idp_rule(idp.issuer)], name="keycloak"), reports_policy(idp.issuer))
    return launch_jwt_server("introspect", idp, *documents, settings=settings(secret_file, {"issuer": idp.issuer}))


@pytest.fixture(scope="module")
def short_cache_server(launch_jwt_server, idp, secret_file):
    """The endpoint configured, client_secret_post, answers remembered 1 s at most."""
    provider = {
        "issuer": idp.issuer,
        "endpoint": f"{idp.issuer}/protocol/openid-connect/token/introspect",
        "client_id": "portcullis-introspect-post",
        "client_auth": "client_secret_post",
        "cache_max_secs": 1,
    }
    return launch_jwt_server("introspect-1s", idp, reports_policy(idp.issuer), settings=settings(secret_file, provider))


@pytest.fixture(scope="module")
def endpoint_down_server(launch_jwt_server, idp, secret_file):
    """The endpoint on a loopback port where nothing listens."""
    provider = {"issuer": idp.issuer, "endpoint": f"http://127.0.0.1:{free_port()}/introspect", "timeout_ms": 1000}
    return launch_jwt_server("introspect-down", idp, reports_policy(idp.issuer), settings=settings(secret_file, provider))


def test_an_active_opaque_token_is_the_bot_with_its_scopes(introspecting_server, idp):
    outcome = ask(introspecting_server.authz, "GET", REPORTS, token=bot_token(idp))
    assert_allowed(outcome)
    assert "authorization" in outcome.headers_to_remove, "the token never reaches the service"


def test_an_active_token_without_the_scope_the_policy_asks_is_denied_by_the_policy(introspecting_server, idp):
    assert_rbac_denied(ask(introspecting_server.authz, "GET", REPORTS, token=bot_token(idp, scope="jobs:write")))


def test_a_made_up_opaque_token_is_refused_as_not_active(introspecting_server):
    outcome = ask(introspecting_server.authz, "GET", REPORTS, token="made-up-token-of-nobody")
    assert_invalid_token(outcome, TOKEN_INACTIVE, None)


def test_a_jwt_is_still_verified_locally_and_never_introspected(introspecting_server, idp):
    before = sum(counter(introspecting_server, "introspection_calls", result) for result in ("active", "inactive", "error"))
    # alice's JWT verifies; the policy wants the bot, so the policy denies it.
    assert_rbac_denied(ask(introspecting_server.authz, "GET", REPORTS, token=idp.token("alice")))
    after = sum(counter(introspecting_server, "introspection_calls", result) for result in ("active", "inactive", "error"))
    assert after == before


def test_many_checks_of_one_token_make_one_introspection_call(introspecting_server, idp):
    token = bot_token(idp)
    calls, hits = counter(introspecting_server, "introspection_calls", "active"), counter(introspecting_server, "introspection_cache_hits")
    for _ in range(5):
        assert_allowed(ask(introspecting_server.authz, "GET", REPORTS, token=token))
    assert counter(introspecting_server, "introspection_calls", "active") == calls + 1
    assert counter(introspecting_server, "introspection_cache_hits") == hits + 4


def test_concurrent_checks_of_a_new_token_make_one_introspection_call(introspecting_server, idp):
    token = bot_token(idp)
    calls = counter(introspecting_server, "introspection_calls", "active")
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: ask(introspecting_server.authz, "GET", REPORTS, token=token), range(8)))
    for outcome in outcomes:
        assert_allowed(outcome)
    assert counter(introspecting_server, "introspection_calls", "active") == calls + 1


def test_a_token_revoked_at_the_provider_is_refused_once_the_cache_bound_passes(short_cache_server, idp):
    token = bot_token(idp)
    assert_allowed(ask(short_cache_server.authz, "GET", REPORTS, token=token))
    revoke(idp, token)
    deadline = time.monotonic() + REVOCATION_DEADLINE_S
    outcome = ask(short_cache_server.authz, "GET", REPORTS, token=token)
    while outcome.allowed and time.monotonic() < deadline:
        time.sleep(0.2)
        outcome = ask(short_cache_server.authz, "GET", REPORTS, token=token)
    assert_invalid_token(outcome, TOKEN_INACTIVE, None)
    assert counter(short_cache_server, "introspection_calls", "inactive") >= 1


def test_the_endpoint_down_refuses_every_token_and_remembers_nothing(endpoint_down_server, idp):
    token = bot_token(idp)
    for _ in range(2):
        assert_invalid_token(ask(endpoint_down_server.authz, "GET", REPORTS, token=token), INTROSPECTION_FAILED, None)
    assert counter(endpoint_down_server, "introspection_calls", "error") == 2, "each check asked again: no failure remembered"
    assert counter(endpoint_down_server, "introspection_cache_hits") == 0
