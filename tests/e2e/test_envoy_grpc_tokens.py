"""E2E with tokens: the real Envoy 1.40 (shipped envoy-grpc.yaml) asks portcullis over gRPC, and the upstream shows what it received.

The policies are the shipped job-board.yaml and mesh-wide.yaml, with keycloak.yaml's rule
(outputs included) moved to an issuer whose key the test owns (inline `jwks`), so tokens are
signed here and verified for real.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from envoy_harness import running_envoy
from harness import REPO_ROOT, send

sys.path.insert(0, str(REPO_ROOT / "tests" / "jwt"))
from jwt_tokens import TEST_ISSUER, SigningKey, claims, jwks, with_payload  # noqa: E402

SHIPPED_POLICIES = REPO_ROOT / "policies"
IDENTITY_HEADERS = {"x-user", "x-user-id", "x-jwt-payload"}


@pytest.fixture(scope="module")
def owned_key() -> SigningKey:
    return SigningKey("RS256")


@pytest.fixture(scope="module")
def token_policies(owned_key, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("e2e-token-policies")
    for name in ("job-board.yaml", "mesh-wide.yaml"):
        (directory / name).write_text((SHIPPED_POLICIES / name).read_text())
    keycloak = yaml.safe_load((SHIPPED_POLICIES / "keycloak.yaml").read_text())
    (rule,) = keycloak["spec"]["jwtRules"]
    keycloak["spec"]["jwtRules"] = [{**rule, "issuer": TEST_ISSUER, "jwks": json.dumps(jwks(owned_key))}]
    (directory / "keycloak.yaml").write_text(yaml.safe_dump(keycloak, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def envoy_with_tokens(launch_portcullis, token_policies, shipped_envoy_config, upstream, tmp_path_factory):
    server = launch_portcullis(token_policies)
    workdir = tmp_path_factory.mktemp("envoy-tokens")
    yield from running_envoy(shipped_envoy_config, portcullis=server.grpc_port, upstream=upstream.port, workdir=workdir, name="envoy-tokens")


def send_to(proxy, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    """One request to the app's host through `proxy`: status, body and lower-cased headers."""
    answer = send(proxy.port, method, target, {"host": "jobs.example.com", **headers})
    return answer.status, answer.body, answer.headers


def received(upstream) -> dict[str, str]:
    (seen,) = upstream.seen
    return dict(seen.headers)


def test_an_allowed_token_is_stripped_and_its_claims_arrive_as_headers(envoy_with_tokens, fresh_upstream, owned_key):
    token = owned_key.token(claims(preferred_username="alice"))
    status, _, _ = send_to(envoy_with_tokens, "POST", "/api/jobs", {"authorization": f"Bearer {token}"})
    assert status == 200
    headers = received(fresh_upstream)
    assert "authorization" not in headers
    assert headers["x-user"] == "alice"
    assert headers["x-user-id"] == claims()["sub"]
    assert headers["x-jwt-payload"] == token.split(".")[1]


def test_a_query_parameter_token_is_removed_from_the_forwarded_path(envoy_with_tokens, fresh_upstream, owned_key):
    token = owned_key.token(claims(preferred_username="alice"))
    status, _, _ = send_to(envoy_with_tokens, "POST", f"/api/jobs?page=2&access_token={token}&sort=asc", {})
    assert status == 200
    assert fresh_upstream.paths_seen() == ["/api/jobs?page=2&sort=asc"]
    assert received(fresh_upstream)["x-user"] == "alice"


def test_forged_identity_headers_are_replaced_by_the_verified_ones(envoy_with_tokens, fresh_upstream, owned_key):
    token = owned_key.token(claims(preferred_username="alice"))
    forged = {"x-user": "admin", "x-user-id": "0", "x-jwt-payload": "eyJzdWIiOiJhZG1pbiJ9"}
    status, _, _ = send_to(envoy_with_tokens, "POST", "/api/jobs", {"authorization": f"Bearer {token}", **forged})
    assert status == 200
    headers = received(fresh_upstream)
    assert (headers["x-user"], headers["x-user-id"]) == ("alice", claims()["sub"])
    assert headers["x-jwt-payload"] == token.split(".")[1]


def test_forged_identity_headers_never_arrive_without_a_token(envoy_with_tokens, fresh_upstream):
    forged = {"x-user": "admin", "x-user-id": "0", "x-jwt-payload": "eyJzdWIiOiJhZG1pbiJ9"}
    status, _, _ = send_to(envoy_with_tokens, "GET", "/api/jobs", forged)
    assert status == 200
    assert not IDENTITY_HEADERS & set(received(fresh_upstream))


def test_a_forged_token_gets_envoys_401_and_never_reaches_the_upstream(envoy_with_tokens, fresh_upstream, owned_key):
    forged = with_payload(owned_key.token(claims()), preferred_username="admin")
    status, body, headers = send_to(envoy_with_tokens, "POST", "/api/jobs", {"authorization": f"Bearer {forged}"})
    assert (status, body) == (401, b"Jwt verification fails")
    assert headers["www-authenticate"] == 'Bearer realm="http://jobs.example.com/api/jobs", error="invalid_token"'
    assert fresh_upstream.seen == []


def test_a_token_denied_by_policy_gets_403_and_never_reaches_the_upstream(envoy_with_tokens, fresh_upstream, owned_key):
    token = owned_key.token(claims(preferred_username="alice"))
    status, body, _ = send_to(envoy_with_tokens, "POST", "/api/jobcategories", {"authorization": f"Bearer {token}"})
    assert (status, body) == (403, b"RBAC: access denied")
    assert fresh_upstream.seen == []
