"""Interop fixtures: gRPC stubs generated from Envoy's protos (xds-protos) talking to portcullis."""

from __future__ import annotations

import shutil

import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2_grpc
from harness import open_grpc_channel


@pytest.fixture(scope="session")
def grpc_channel(portcullis):
    channel = open_grpc_channel(portcullis.grpc_target)
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def authz(grpc_channel) -> external_auth_pb2_grpc.AuthorizationStub:
    """envoy.service.auth.v3.Authorization client for the server with the shipped policies."""
    return external_auth_pb2_grpc.AuthorizationStub(grpc_channel)


@pytest.fixture(scope="session")
def health(grpc_channel) -> health_pb2_grpc.HealthStub:
    return health_pb2_grpc.HealthStub(grpc_channel)


@pytest.fixture(scope="session")
def portcullis_without_mesh_policies(launch_portcullis, shipped_policies, tmp_path_factory):
    """A second server loaded with job-board.yaml only (no mesh-wide DENY policy)."""
    policies = tmp_path_factory.mktemp("job-board-only")
    shutil.copy(shipped_policies / "job-board.yaml", policies)
    return launch_portcullis(policies)


@pytest.fixture(scope="session")
def authz_without_mesh_policies(portcullis_without_mesh_policies):
    channel = open_grpc_channel(portcullis_without_mesh_policies.grpc_target)
    yield external_auth_pb2_grpc.AuthorizationStub(channel)
    channel.close()
