"""E2E: a header sent several times through the real Envoy 1.40, with and without encode_raw_headers, never slips past a DENY."""

from __future__ import annotations

import http.client

import pytest
from envoy_harness import render_envoy_config, start_envoy
from harness import free_port, stop_process

REQUEST_TIMEOUT_S = 5

# The shipped route's context_extensions put requests in namespace job-service.
DENY_ACME = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-acme, namespace: job-service}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-tenant]", values: [acme]}]
"""


@pytest.fixture(scope="module")
def deny_acme_portcullis(launch_portcullis, tmp_path_factory):
    policies = tmp_path_factory.mktemp("deny-acme-policies")
    (policies / "deny-acme.yaml").write_text(DENY_ACME)
    return launch_portcullis(policies)


@pytest.fixture(scope="module", params=[True, False], ids=["encode_raw_headers", "joined_headers"])
def envoy_with_raw_headers_or_not(request, shipped_envoy_config, upstream, deny_acme_portcullis, tmp_path_factory):
    """Envoy with the shipped config, its ext_authz `encode_raw_headers` set as the parameter says."""
    config = render_envoy_config(
        shipped_envoy_config, listener=free_port(), admin=free_port(), portcullis=deny_acme_portcullis.grpc_port, upstream=upstream.port
    )
    ext_authz = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    ext_authz["typed_config"]["encode_raw_headers"] = request.param
    name = "envoy-raw-headers" if request.param else "envoy-joined-headers"
    proxy = start_envoy(config, tmp_path_factory.mktemp(name), name)
    yield proxy
    stop_process(proxy.process)


def send_tenants(proxy, tenants: list[str]) -> int:
    """GET /api/jobs with one `x-tenant` header line per value; the status."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.putrequest("GET", "/api/jobs")
        for tenant in tenants:
            connection.putheader("x-tenant", tenant)
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_denied_value_sent_after_another_is_denied(envoy_with_raw_headers_or_not, fresh_upstream):
    assert send_tenants(envoy_with_raw_headers_or_not, ["other", "acme"]) == 403
    assert fresh_upstream.seen == []


def test_values_none_of_which_is_denied_pass(envoy_with_raw_headers_or_not, fresh_upstream):
    assert send_tenants(envoy_with_raw_headers_or_not, ["other", "more"]) == 200
    assert fresh_upstream.paths_seen() == ["/api/jobs"]
