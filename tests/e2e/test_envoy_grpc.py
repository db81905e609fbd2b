"""E2E: real HTTP through the real Envoy 1.40 (shipped envoy-grpc.yaml) whose ext_authz asks portcullis over gRPC."""

from __future__ import annotations

import json
import subprocess

import pytest
from envoy_harness import SHIPPED_ENVOY_CONFIG, envoy_binary
from harness import send

RBAC_DENIED_BODY = b"RBAC: access denied"


# POST /api/jobs is denied only when the route's context_extensions reach
# portcullis (without them no policy would apply and it would be allowed).
REQUESTS = {
    "GET /api/jobs": ("GET", "/api/jobs", 200),
    "query string": ("GET", "/api/jobs?x=1", 200),
    "job categories": ("GET", "/api/jobcategories/3", 200),
    "anonymous POST /api/jobs": ("POST", "/api/jobs", 403),
    "debug endpoint": ("GET", "/debug/x", 403),
    "outside allowed paths": ("GET", "/", 403),
}


@pytest.mark.parametrize(("method", "path", "status"), REQUESTS.values(), ids=REQUESTS.keys())
def test_allowed_requests_reach_upstream_and_denied_ones_get_portcullis_403(envoy, fresh_upstream, method, path, status):
    answer = send(envoy.port, method, path)
    assert answer.status == status
    if status == 200:
        assert fresh_upstream.paths_seen() == [path]
        assert json.loads(answer.body)["method"] == method
    else:
        assert answer.body == RBAC_DENIED_BODY
        assert fresh_upstream.seen == []


# Raw paths as an attacker sends them. With normalize_path and merge_slashes
# Envoy 1.40 rewrites them before ext_authz (e.g. "/api/jobs/../debug/x" is
# judged and would be forwarded as "/api/debug/x"); portcullis then denies.
# A NUL byte is rejected by Envoy itself with an empty 400.
PATH_TRICKS = {
    "dot-dot": ("/api/jobs/../debug/x", 403, RBAC_DENIED_BODY),
    "encoded dot-dot": ("/api/jobs/%2e%2e/debug/x", 403, RBAC_DENIED_BODY),
    "dot-dot to /debug": ("/api/jobs/../../debug/x", 403, RBAC_DENIED_BODY),
    "backslashes": ("/api/jobs\\..\\..\\debug\\x", 403, RBAC_DENIED_BODY),
    "double slash": ("//debug/x", 403, RBAC_DENIED_BODY),
    "inner double slash": ("/api//debug/x", 403, RBAC_DENIED_BODY),
    "NUL byte": ("/api/jobs%00", 400, b""),
}


@pytest.mark.parametrize(("raw_path", "status", "body"), PATH_TRICKS.values(), ids=PATH_TRICKS.keys())
def test_path_tricks_never_reach_upstream(envoy, fresh_upstream, raw_path, status, body):
    answer = send(envoy.port, "GET", raw_path)
    assert (answer.status, answer.body) == (status, body)
    assert fresh_upstream.seen == []


def test_upstream_gets_the_normalized_path_that_was_judged(envoy, fresh_upstream):
    assert send(envoy.port, "GET", "/api/x/../%6aobs?page=2").status == 200
    assert fresh_upstream.paths_seen() == ["/api/jobs?page=2"]


def test_fails_closed_without_portcullis(envoy_without_portcullis, fresh_upstream):
    answer = send(envoy_without_portcullis.port, "GET", "/api/jobs")
    assert answer.status == 403
    assert answer.body != RBAC_DENIED_BODY  # Envoy's own refusal, not a policy decision
    assert fresh_upstream.seen == []


def test_envoy_validates_the_shipped_file_unchanged():
    command = [str(envoy_binary()), "--mode", "validate", "-c", str(SHIPPED_ENVOY_CONFIG), "--disable-hot-restart"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _http_connection_manager(config: dict) -> dict:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def _cluster(config: dict, name: str) -> dict:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


def test_shipped_config_keeps_its_safety_settings(shipped_envoy_config):
    manager = _http_connection_manager(shipped_envoy_config)
    ext_authz = manager["http_filters"][0]
    per_route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"][ext_authz["name"]]
    portcullis = _cluster(shipped_envoy_config, "portcullis")
    assert (manager["normalize_path"], manager["merge_slashes"]) == (True, True)
    assert ext_authz["name"] == "envoy.filters.http.ext_authz"
    assert ext_authz["typed_config"]["failure_mode_allow"] is False
    assert ext_authz["typed_config"]["encode_raw_headers"] is True
    assert ext_authz["typed_config"]["transport_api_version"] == "V3"
    assert "with_request_body" not in ext_authz["typed_config"]
    assert ext_authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "portcullis"
    assert per_route["check_settings"]["context_extensions"] == {"namespace": "job-service", "app": "job-service"}
    options = portcullis["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert _endpoint_port(portcullis) == 9001
    assert shipped_envoy_config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def _endpoint_port(cluster: dict) -> int:
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
