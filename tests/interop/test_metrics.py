"""/metrics scraped and parsed by the Prometheus client library's own parser, after known traffic."""

from __future__ import annotations

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from check_requests import http_check

JOB_SERVICE = {"namespace": "job-service", "app": "job-service"}

DOCUMENTED_METRICS = [
    "portcullis_checks",
    "portcullis_check_duration_seconds",
    "portcullis_policies_loaded",
    "portcullis_policy_generation",
    "portcullis_reloads",
    "portcullis_jwks_fetches",
    "portcullis_jwks_keys",
    "portcullis_jwks_seconds_since_success",
    "portcullis_token_cache_hits",
    "portcullis_token_cache_misses",
    "portcullis_token_cache_entries",
]


@pytest.fixture(scope="module")
def fresh_server(launch_portcullis):
    """A server of its own, so that its counters hold only this module's traffic."""
    return launch_portcullis()


def scrape(server) -> dict:
    status, body = server.admin_get("/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    return families


def sample_value(families: dict, family: str, sample: str, **labels) -> float | None:
    for found in families[family].samples:
        if found.name == sample and all(found.labels.get(key) == value for key, value in labels.items()):
            return found.value
    return None


def test_metrics_parse_and_count_known_traffic(fresh_server):
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    channel = grpc.insecure_channel(fresh_server.grpc_target)
    authz = external_auth_pb2_grpc.AuthorizationStub(channel)
    for _ in range(3):
        authz.Check(http_check("GET", "/api/jobs", JOB_SERVICE))
    for _ in range(2):
        authz.Check(http_check("POST", "/api/jobs", JOB_SERVICE))
    authz.Check(http_check("GET", "/debug/vars", JOB_SERVICE))
    channel.close()

    families = scrape(fresh_server)
    for name in ["portcullis_checks", "portcullis_check_duration_seconds", "portcullis_policies_loaded", "portcullis_policy_generation", "portcullis_jwks_fetches"]:
        assert name in families, f"{name} missing: {sorted(families)}"
    checks = "portcullis_checks_total"
    assert sample_value(families, "portcullis_checks", checks, door="grpc", decision="allow", reason="allowed_by_policy") == 3
    assert sample_value(families, "portcullis_checks", checks, door="grpc", decision="deny", reason="no_allow_match") == 2
    assert sample_value(families, "portcullis_checks", checks, door="grpc", decision="deny", reason="denied_by_policy") == 1
    count = sample_value(families, "portcullis_check_duration_seconds", "portcullis_check_duration_seconds_count", door="grpc")
    assert count == 6
    assert sample_value(families, "portcullis_policies_loaded", "portcullis_policies_loaded") == 3
    assert sample_value(families, "portcullis_policy_generation", "portcullis_policy_generation") == 1
    # The shipped Keycloak issuer is not running here: its fetches failed and were counted.
    errors = sample_value(families, "portcullis_jwks_fetches", "portcullis_jwks_fetches_total", issuer="http://127.0.0.1:8180/realms/jobs", result="error")
    assert errors is not None and errors >= 1
    # Labels stay bounded: no path, no token, no principal among them.
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"door", "decision", "reason", "issuer", "result", "le"}, sample


def test_every_documented_metric_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in DOCUMENTED_METRICS:
        assert name in readme, f"{name} is not documented"
