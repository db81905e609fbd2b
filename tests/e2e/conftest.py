"""E2E fixtures: a recording upstream and the real Envoy binary running the shipped deploy/envoy/envoy-grpc.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from envoy_harness import SHIPPED_ENVOY_CONFIG, render_envoy_config, start_envoy
from harness import RecordingUpstream, free_port, serving, stop_process


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


def _envoy_fixture(shipped, upstream, portcullis_port: int, workdir: Path, name: str):
    config = render_envoy_config(
        shipped, listener=free_port(), admin=free_port(), portcullis=portcullis_port, upstream=upstream.port
    )
    proxy = start_envoy(config, workdir, name)
    yield proxy
    stop_process(proxy.process)


@pytest.fixture(scope="session")
def envoy(shipped_envoy_config, upstream, portcullis, tmp_path_factory):
    """Envoy with the shipped config, asking the portcullis under test."""
    workdir = tmp_path_factory.mktemp("envoy")
    yield from _envoy_fixture(shipped_envoy_config, upstream, portcullis.grpc_port, workdir, "envoy")


@pytest.fixture(scope="session")
def envoy_without_portcullis(shipped_envoy_config, upstream, tmp_path_factory):
    """Envoy with the shipped config whose portcullis address has nothing listening."""
    workdir = tmp_path_factory.mktemp("envoy-no-authz")
    yield from _envoy_fixture(shipped_envoy_config, upstream, free_port(), workdir, "envoy-no-authz")
