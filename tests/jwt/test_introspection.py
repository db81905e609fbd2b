"""Opaque tokens checked by a real provider's introspection endpoint (tests/oidc/idp.mjs, RFC 7662).

The IdP's `jobs-bot` client gets opaque access tokens by the client-credentials grant; portcullis
introspects them as `portcullis-introspect`. The policy allows `GET /api/reports` to the bot as
`<issuer>/jobs-bot` holding the scope `jobs:read`. Calls to the endpoint are counted by the
server's own metrics. With `introspect_jwts`, alice's JWTs are introspected too (the IdP answers
for a JWT as Keycloak does, and ends a user's sessions on request); with `private_key_jwt`,
portcullis authenticates as `portcullis-introspect-jwt` with a key the test registers.
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
from cryptography.hazmat.primitives import serialization
from jwt_checks import assert_allowed, assert_invalid_token, assert_rbac_denied, ask
from jwt_policies import idp_rule, request_authentication
from jwt_tokens import SigningKey

TOKEN_INACTIVE = "Token is not active"
INTROSPECTION_FAILED = "Token introspection failed"
REPORTS = "/api/reports"
REVOCATION_DEADLINE_S = 15.0  # a hang guard: the cache bound is 1 s
ALICE_SUB = "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"  # tests/oidc/idp.mjs


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


def users_policy(issuer: str) -> dict:
    """GET /api/reports* for any user the IdP vouches for (alice's JWT)."""
    rule = {"from": [{"source": {"requestPrincipals": [f"{issuer}/*"]}}], "to": [{"operation": {"methods": ["GET"], "paths": [f"{REPORTS}*"]}}]}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "reports-users", "namespace": "job-service"},
        "spec": {"selector": {"matchLabels": {"app": "job-service"}}, "action": "ALLOW", "rules": [rule]},
    }


def end_sessions(idp, sub: str) -> None:
    """Ends the user's sessions at the IdP, as Keycloak's sign-out of a user does."""
    request = urllib.request.Request(f"{idp.base}/admin/end-sessions?sub={sub}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["ended"] >= 1


def register_private_key_jwt_client(idp, key: SigningKey) -> None:
    """Registers `portcullis-introspect-jwt` at the IdP with the public half of `key`."""
    body = json.dumps({"keys": [key.public_jwk()]}).encode()
    request = urllib.request.Request(f"{idp.base}/admin/private-key-jwt-client", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def poll_until_refused(server, token: str):
    """Asks until the token is refused (hang-guarded); the last outcome."""
    deadline = time.monotonic() + REVOCATION_DEADLINE_S
    outcome = ask(server.authz, "GET", REPORTS, token=token)
    while outcome.allowed and time.monotonic() < deadline:
        time.sleep(0.2)
        outcome = ask(server.authz, "GET", REPORTS, token=token)
    return outcome


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


@pytest.fixture(scope="module")
def jwt_session_idp(launch_idp):
    """An IdP of the module's own: its users' sessions are ended by the tests."""
    return launch_idp()


@pytest.fixture(scope="module")
def jwt_introspecting_server(launch_jwt_server, jwt_session_idp, secret_file):
    """The IdP's JWTs verified locally and introspected too, answers remembered 1 s at most."""
    idp = jwt_session_idp
    documents = (request_authentication([idp_rule(idp.issuer)], name="keycloak"), users_policy(idp.issuer))
    provider = {"issuer": idp.issuer, "introspect_jwts": True, "cache_max_secs": 1}
    return launch_jwt_server("introspect-jwts", idp, *documents, settings=settings(secret_file, provider))


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def private_key_jwt_server(request, launch_jwt_server, idp, tmp_path_factory):
    """portcullis authenticates to the endpoint with a client assertion signed by a key the IdP knows."""
    key = SigningKey(request.param)
    register_private_key_jwt_client(idp, key)
    key_file = tmp_path_factory.mktemp("private-key-jwt") / "client-key.pem"
    key_file.write_bytes(
        key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    block = {
        "issuer": idp.issuer,
        "client_id": "portcullis-introspect-jwt",
        "client_auth": "private_key_jwt",
        "private_key_file": str(key_file),
        "private_key_id": key.kid,
    }
    return launch_jwt_server(
        f"introspect-{request.param}", idp, reports_policy(idp.issuer), settings=json.dumps({"introspection": {"providers": [block]}})
    )


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


def test_a_jwt_is_introspected_when_its_provider_says_so_and_the_answer_is_remembered(jwt_introspecting_server):
    server, idp = jwt_introspecting_server, jwt_introspecting_server.idp
    token = idp.token("admin")
    calls = counter(server, "introspection_calls", "active")
    for _ in range(3):
        assert_allowed(ask(server.authz, "GET", REPORTS, token=token))
    assert 1 <= counter(server, "introspection_calls", "active") - calls <= 3, "asked at most once a second"


def test_a_jwt_whose_session_the_provider_ended_is_refused_once_the_cache_bound_passes(jwt_introspecting_server):
    server, idp = jwt_introspecting_server, jwt_introspecting_server.idp
    token = idp.token("alice")
    assert_allowed(ask(server.authz, "GET", REPORTS, token=token))
    end_sessions(idp, ALICE_SUB)
    assert_invalid_token(poll_until_refused(server, token), TOKEN_INACTIVE, None)
    assert counter(server, "introspection_calls", "inactive") >= 1
    assert_allowed(ask(server.authz, "GET", REPORTS, token=idp.token("alice")))  # a new login's token is active


def test_a_client_assertion_signed_with_the_configured_key_authenticates_portcullis_to_the_endpoint(private_key_jwt_server, idp):
    assert_allowed(ask(private_key_jwt_server.authz, "GET", REPORTS, token=bot_token(idp)))
    # Each call signs a new assertion: oidc-provider refuses a replayed `jti`.
    assert_allowed(ask(private_key_jwt_server.authz, "GET", REPORTS, token=bot_token(idp)))
    assert counter(private_key_jwt_server, "introspection_calls", "error") == 0


def test_readyz_names_an_introspection_endpoint_whose_last_call_failed_and_stays_ready(endpoint_down_server, idp):
    assert_invalid_token(ask(endpoint_down_server.authz, "GET", REPORTS, token=bot_token(idp)), INTROSPECTION_FAILED, None)
    status, body = endpoint_down_server.server.admin_get("/readyz")
    assert status == 200, "named, not failed: other credentials still work"
    assert f"introspection failing for issuer {idp.issuer}: " in body.decode(), body
    _, metrics = endpoint_down_server.server.admin_get("/metrics")
    assert "\nportcullis_introspection_providers_failing 1\n" in metrics.decode()


def test_readyz_names_no_introspection_endpoint_while_its_calls_get_answers(introspecting_server, idp):
    assert_allowed(ask(introspecting_server.authz, "GET", REPORTS, token=bot_token(idp)))
    status, body = introspecting_server.server.admin_get("/readyz")
    assert (status, "introspection failing" in body.decode()) == (200, False), body
    _, metrics = introspecting_server.server.admin_get("/metrics")
    assert "\nportcullis_introspection_providers_failing 0\n" in metrics.decode()
