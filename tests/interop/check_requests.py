"""Build CheckRequests shaped like Envoy's and compare CheckResponses with expected verdicts."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf import json_format

# Workloads, as Envoy's per-route context_extensions name them.
JOB_SERVICE = {"namespace": "job-service", "app": "job-service"}
NOTIFICATION_SERVICE = {"namespace": "job-notification-service", "app": "job-notification-service"}
UNPROTECTED = {"namespace": "other", "app": "other"}

# SPIFFE identities, as Envoy reports a peer's URI SAN.
JOB_SERVICE_ID = "spiffe://cluster.local/ns/job-service/sa/job-service"
NOTIFICATION_ID = "spiffe://cluster.local/ns/job-notification-service/sa/job-notification-service"
STRANGER_ID = "spiffe://cluster.local/ns/other/sa/default"
JOB_SERVICE_ID_OTHER_TRUST_DOMAIN = "spiffe://evil.example/ns/job-service/sa/job-service"

# Rules of the shipped policies, as portcullis names them in `policy`.
JOB_SERVICE_READ_RULE = "ns[job-service]-policy[job-service]-rule[0]"
NOTIFICATION_CALLER_RULE = "ns[job-notification-service]-policy[job-notification-service]-rule[0]"
DENY_DEBUG_RULE = "ns[istio-system]-policy[deny-debug-endpoints]-rule[0]"

GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_PERMISSION_DENIED = 0, 3, 7

_request_ids = itertools.count(4675568548280277140)


@dataclass(frozen=True)
class Verdict:
    """Everything portcullis tells Envoy about one request."""

    grpc_code: int
    response_kind: str  # which CheckResponse.http_response oneof is set
    http_status: int | None
    body: str | None
    decision: str
    reason: str
    policy: str  # "" when no policy decided


def allowed(reason: str, policy: str = "") -> Verdict:
    return Verdict(GRPC_OK, "ok_response", None, None, "allow", reason, policy)


def forbidden(reason: str, policy: str = "") -> Verdict:
    return Verdict(GRPC_PERMISSION_DENIED, "denied_response", 403, "RBAC: access denied", "deny", reason, policy)


BAD_REQUEST = Verdict(GRPC_INVALID_ARGUMENT, "denied_response", 400, "Bad Request", "deny", "invalid_path", "")
NO_POLICIES = allowed("no_policies")
NO_ALLOW_MATCH = forbidden("no_allow_match")
READ_ALLOWED = allowed("allowed_by_policy", JOB_SERVICE_READ_RULE)
CALLER_ALLOWED = allowed("allowed_by_policy", NOTIFICATION_CALLER_RULE)
DEBUG_DENIED = forbidden("denied_by_policy", DENY_DEBUG_RULE)


def verdict_of(response: external_auth_pb2.CheckResponse) -> Verdict:
    metadata = json_format.MessageToDict(response.dynamic_metadata)
    kind = response.WhichOneof("http_response")
    denied = response.denied_response if kind == "denied_response" else None
    return Verdict(
        grpc_code=response.status.code,
        response_kind=kind,
        http_status=denied.status.code if denied else None,
        body=denied.body if denied else None,
        decision=metadata.get("decision"),
        reason=metadata.get("reason"),
        policy=metadata.get("policy", ""),
    )


def assert_verdict(response: external_auth_pb2.CheckResponse, expected: Verdict) -> None:
    assert asdict(verdict_of(response)) == asdict(expected)


def _socket_peer(port: int, principal: str = "", labels: dict | None = None) -> attribute_context_pb2.AttributeContext.Peer:
    peer = attribute_context_pb2.AttributeContext.Peer(principal=principal, labels=labels or {})
    peer.address.socket_address.address = "127.0.0.1"
    peer.address.socket_address.port_value = port
    return peer


def _peers(attributes, source_principal: str, destination_principal: str, destination_labels: dict | None) -> None:
    attributes.source.CopyFrom(_socket_peer(57684, source_principal))
    attributes.destination.CopyFrom(_socket_peer(8080, destination_principal, destination_labels))


def http_check(
    method: str,
    path: str,
    workload: dict | None = None,
    *,
    source_principal: str = "",
    destination_principal: str = "",
    destination_labels: dict | None = None,
    protocol: str = "HTTP/1.1",
    authority: str = "jobs.example.com",
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy's HTTP ext_authz filter sends it.

    As captured from Envoy 1.40: `path` carries the query string, and `headers`
    holds the pseudo-headers (:method, :path, :authority, :scheme) next to the
    ordinary ones; per-route context_extensions name the workload.
    """
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    _peers(attributes, source_principal, destination_principal, destination_labels)
    attributes.request.time.FromNanoseconds(time.time_ns())
    http = attributes.request.http
    http.id = str(next(_request_ids))
    http.method, http.path, http.host = method, path, authority
    http.scheme, http.protocol = "http", protocol
    http.headers.update(
        {
            "x-request-id": "89d73cfc-1362-45fd-9c12-8d00b345a3db",
            "x-forwarded-proto": "http",
            "user-agent": "interop-test",
            ":scheme": "http",
            ":path": path,
            ":method": method,
            ":authority": authority,
        }
    )
    attributes.context_extensions.update(workload or {})
    return request


def tcp_check(
    *,
    source_principal: str = "",
    destination_principal: str = "",
    destination_labels: dict | None = None,
    workload: dict | None = None,
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy's network (TCP) ext_authz filter sends it: peers only, no request.http."""
    request = external_auth_pb2.CheckRequest()
    _peers(request.attributes, source_principal, destination_principal, destination_labels)
    request.attributes.context_extensions.update(workload or {})
    return request
