"""JWT fixtures: a real OIDC provider (tests/oidc/idp.mjs), policy sets with RequestAuthentication, and servers.

The IdP always starts before the server that names it, since the server fetches each
issuer's keys (OIDC discovery, then the JWKS) at start-up.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from harness import REPO_ROOT, free_port, open_grpc_channel
from jwt_policies import idp_rule, inline_rule, request_authentication, write_policy_dir
from jwt_tokens import TEST_ISSUER, SigningKey
from oidc_idp import Idp, start_idp

# Envoy-shaped CheckRequests are built by the interop suite's helpers (tests/interop/check_requests.py).
sys.path.insert(0, str(REPO_ROOT / "tests" / "interop"))

# ---------------------------------------------------------------- processes


@pytest.fixture(scope="session")
def idp_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("idp-logs")


@pytest.fixture(scope="session")
def launch_idp(idp_logs):
    """Factory: launch_idp() starts an IdP; each is SIGTERMed at session end and must exit 0."""
    started: list[Idp] = []

    def launch() -> Idp:
        idp = start_idp(idp_logs / f"idp-{len(started)}.log")
        started.append(idp)
        return idp

    yield launch
    unclean = []
    for idp in started:
        if idp.process.poll() is None:
            code = idp.stop()
            if code != 0:
                unclean.append(f"{idp.log.name}: exit {code} on SIGTERM (want 0)")
    if unclean:
        pytest.fail("\n".join(unclean))


@pytest.fixture(scope="session")
def idp(launch_idp) -> Idp:
    """The IdP shared by every test that does not change it (no rotation, never killed)."""
    return launch_idp()


@pytest.fixture(scope="session")
def test_key() -> SigningKey:
    """RS256 key of TEST_ISSUER, published inline in the policies."""
    return SigningKey("RS256")


@pytest.fixture(scope="session")
def test_es_key() -> SigningKey:
    """ES256 key of TEST_ISSUER, published inline next to test_key."""
    return SigningKey("ES256")


@dataclass
class JwtServer:
    """A portcullis server, its Authorization stub and the IdP its policies name."""

    server: object  # conftest.PortcullisServer
    authz: external_auth_pb2_grpc.AuthorizationStub
    idp: Idp | None
    policies: Path


@pytest.fixture(scope="session")
def launch_jwt_server(launch_portcullis, tmp_path_factory):
    """Factory: launch_jwt_server(name, idp, *documents, **options) writes a policy dir and starts a server."""
    channels: list[grpc.Channel] = []

    def launch(name: str, idp: Idp | None, *documents: dict, **options) -> JwtServer:
        policies = write_policy_dir(tmp_path_factory.mktemp(f"policies-{name}"), *documents)
        server = launch_portcullis(policies, **options)
        channel = open_grpc_channel(server.grpc_target)
        channels.append(channel)
        return JwtServer(server, external_auth_pb2_grpc.AuthorizationStub(channel), idp, policies)

    yield launch
    for channel in channels:
        channel.close()


def default_rules(idp: Idp, test_key: SigningKey, test_es_key: SigningKey, **idp_fields) -> list[dict]:
    return [idp_rule(idp.issuer, **idp_fields), inline_rule(TEST_ISSUER, test_key, test_es_key)]


@pytest.fixture(scope="session")
def jwt_server(launch_jwt_server, idp, test_key, test_es_key) -> JwtServer:
    """RequestAuthentication in job-service (app=job-service): the IdP by discovery and TEST_ISSUER inline."""
    document = request_authentication(default_rules(idp, test_key, test_es_key), name="keycloak")
    return launch_jwt_server("default", idp, document)


@pytest.fixture(scope="session")
def audience_server(launch_jwt_server, idp, test_key, test_es_key) -> JwtServer:
    """As jwt_server, with `audiences: [jobs-api]` on the IdP's rule."""
    document = request_authentication(default_rules(idp, test_key, test_es_key, audiences=["jobs-api"]), name="keycloak")
    return launch_jwt_server("audiences", idp, document)


@pytest.fixture(scope="session")
def forwarding_server(launch_jwt_server, idp, test_key, test_es_key) -> JwtServer:
    """As jwt_server, with `forwardOriginalToken: true`; mesh-wide (istio-system), so every workload."""
    document = request_authentication(
        default_rules(idp, test_key, test_es_key, forwardOriginalToken=True), name="keycloak", namespace="istio-system"
    )
    return launch_jwt_server("forward", idp, document)


@pytest.fixture(scope="session")
def custom_location_server(launch_jwt_server, idp) -> JwtServer:
    """The IdP's tokens only in `x-token: Token <jwt>` or `?tok=<jwt>`."""
    rule = idp_rule(idp.issuer, fromHeaders=[{"name": "x-token", "prefix": "Token "}], fromParams=["tok"])
    return launch_jwt_server("locations", idp, request_authentication([rule], name="keycloak"))


@pytest.fixture(scope="module")
def rotation_server(launch_idp, launch_jwt_server, test_key, test_es_key) -> JwtServer:
    """A server with an IdP of its own, whose keys the tests rotate."""
    idp = launch_idp()
    return launch_jwt_server("rotation", idp, request_authentication(default_rules(idp, test_key, test_es_key)))


@pytest.fixture(scope="module")
def orphaned_server(launch_idp, launch_jwt_server, test_key, test_es_key) -> JwtServer:
    """A server with an IdP of its own, which the tests kill after the server fetched its keys."""
    idp = launch_idp()
    return launch_jwt_server("orphaned", idp, request_authentication(default_rules(idp, test_key, test_es_key)))


@pytest.fixture(scope="module")
def unreachable_issuer() -> str:
    """An issuer in Keycloak's layout on a loopback port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/realms/jobs"


@pytest.fixture(scope="module")
def idp_down_server(launch_jwt_server, unreachable_issuer, test_key, test_es_key) -> JwtServer:
    """A server whose remote issuer never answers: only /healthz is awaited, not /readyz."""
    rules = [idp_rule(unreachable_issuer), inline_rule(TEST_ISSUER, test_key, test_es_key)]
    return launch_jwt_server("idp-down", None, request_authentication(rules, name="keycloak"), ready_path="/healthz")
