"""E2E fixtures: a recording upstream and the real Envoy binary running the shipped deploy/envoy/envoy-grpc.yaml."""

from __future__ import annotations

import pytest
import yaml
from envoy_harness import SHIPPED_ENVOY_CONFIG, running_envoy
from harness import RecordingUpstream, free_port, serving


@pytest.fixture(scope="session")
def shipped_envoy_config() -> dict:
    return yaml.safe_load(SHIPPED_ENVOY_CONFIG.read_text())


@pytest.fixture(scope="session")
def upstream():
    with serving(RecordingUpstream()) as server:
        yield server


@pytest.fixture
def fresh_upstream(upstream) -> RecordingUpstream:
    """The upstream with its record of requests emptied for this test."""
    upstream.seen.clear()
    return upstream


@pytest.fixture(scope="session")
def envoy(shipped_envoy_config, upstream, portcullis, tmp_path_factory):
    """Envoy with the shipped config, asking the portcullis under test."""
    workdir = tmp_path_factory.mktemp("envoy")
    yield from running_envoy(shipped_envoy_config, portcullis=portcullis.grpc_port, upstream=upstream.port, workdir=workdir, name="envoy")


@pytest.fixture(scope="session")
def envoy_without_portcullis(shipped_envoy_config, upstream, tmp_path_factory):
    """Envoy with the shipped config whose portcullis address has nothing listening."""
    workdir = tmp_path_factory.mktemp("envoy-no-authz")
    yield from running_envoy(shipped_envoy_config, portcullis=free_port(), upstream=upstream.port, workdir=workdir, name="envoy-no-authz")
