"""/metrics scraped and parsed by the Prometheus client library's own parser, after known traffic."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from check_requests import http_check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jwt"))
from jwt_policies import request_authentication  # noqa: E402
from jwt_tokens import SigningKey, jwks  # noqa: E402

JOB_SERVICE = {"namespace": "job-service", "app": "job-service"}

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_ISSUER = "http://127.0.0.1:8180/realms/jobs"  # the issuer policies/keycloak.yaml trusts
# Port 9 (discard) on loopback: nothing listens there on these machines.
UNREACHABLE_ISSUER = "http://127.0.0.1:9/realms/jobs"
# The metric names of the metrics table in docs/operations.md: the rows whose first cell names `portcullis_*`.
DOCUMENTED_ROW = re.compile(r"^\| (`portcullis_[a-z_]+`(?:, `portcullis_[a-z_]+`)*) \|", re.MULTILINE)


def documented_metrics() -> set[str]:
    """Every sample name the documented metrics table lists."""
    readme = (REPO_ROOT / "docs" / "operations.md").read_text()
    return {name.strip("`") for row in DOCUMENTED_ROW.findall(readme) for name in row.split(", ")}


def exported_metrics(families: dict) -> set[str]:
    """Every metric the server exports, named as its samples are (counters with `_total`)."""
    suffix = {"counter": "_total"}
    return {family.name + suffix.get(family.type, "") for family in families.values()}


@pytest.fixture(scope="module")
def key_server():
    """An issuer's discovery document and JWKS on a loopback port, so that a key fetch succeeds."""
    published = jwks(SigningKey("RS256"))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
            documents = {"/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": f"{issuer}/jwks"}, "/jwks": published}
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def fresh_server(launch_portcullis, key_server, tmp_path_factory):
    """A server of its own, so that its counters hold only this module's traffic.

    It runs the shipped policies with their issuer moved to a port where nothing listens, so its
    key fetches fail whether or not the demo IdP holds the shipped issuer's port, and trusts a
    second issuer whose keys it fetches from key_server.
    """
    policies = tmp_path_factory.mktemp("metrics-policies")
    for shipped in (REPO_ROOT / "policies").glob("*.yaml"):
        (policies / shipped.name).write_text(shipped.read_text().replace(SHIPPED_ISSUER, UNREACHABLE_ISSUER))
    assert UNREACHABLE_ISSUER in (policies / "keycloak.yaml").read_text()
    reachable = request_authentication([{"issuer": key_server}], name="reachable-issuer", namespace="istio-system")
    (policies / "reachable-issuer.yaml").write_text(json.dumps(reachable))
    # The shipped dashboard.yaml declares data sources, so their per-source series exist.
    assert "kind: DataSource" in (policies / "dashboard.yaml").read_text()
    return launch_portcullis(policies)


def reload_and_wait(server, families_before: dict) -> dict:
    """SIGHUP the server and wait until its reload is counted; returns the families after it."""
    before = sample_value(families_before, "portcullis_reloads", "portcullis_reloads_total", result="ok") or 0
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        families = scrape(server)
        if (sample_value(families, "portcullis_reloads", "portcullis_reloads_total", result="ok") or 0) > before:
            return families
        time.sleep(0.05)
    pytest.fail("the reload after SIGHUP was never counted")


def scrape(server) -> dict:
    status, body = server.admin_get("/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    return families


def sample_value(families: dict, family: str, sample: str, **labels) -> float | None:
    """The sample's value; None when the server exports no such sample (never read as 0)."""
    if family not in families:
        return None
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
    assert sample_value(families, "portcullis_policies_loaded", "portcullis_policies_loaded") == 6  # the shipped set
    assert sample_value(families, "portcullis_policy_generation", "portcullis_policy_generation") == 1
    # The shipped Keycloak issuer is not running here: its fetches failed and were counted.
    errors = sample_value(families, "portcullis_jwks_fetches", "portcullis_jwks_fetches_total", issuer=UNREACHABLE_ISSUER, result="error")
    assert errors is not None and errors >= 1
    # Labels stay bounded: no path, no token, no principal among them.
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"door", "decision", "reason", "issuer", "result", "source", "listener", "le"}, sample


def test_the_docs_list_exactly_the_metrics_the_server_exports(fresh_server):
    documented = documented_metrics()
    assert len(documented) >= 10, f"the metrics table of docs/operations.md was not found: {sorted(documented)}"
    # After a reload every metric has a sample: checks (the other test's traffic or none),
    # fetches that failed and succeeded, keys, cache counters and the reload itself.
    exported = exported_metrics(reload_and_wait(fresh_server, scrape(fresh_server)))
    assert exported - documented == set(), "exported but not in the metrics table of docs/operations.md"
    assert documented - exported == set(), "in the metrics table of docs/operations.md but not exported"
