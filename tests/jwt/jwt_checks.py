"""Check requests carrying tokens, and what a CheckResponse tells Envoy about them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from check_requests import JOB_SERVICE, http_check
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format

CHECK_TIMEOUT_S = 5
GRPC_OK, GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED = 0, 7, 16
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
AUTHORITY = "jobs.example.com"  # what check_requests.http_check sends, with scheme http

# Envoy's jwt_authn messages: the body of a 401 (or of the 403 for audiences).
VERIFICATION_FAILS = "Jwt verification fails"
EXPIRED = "Jwt is expired"
NOT_YET_VALID = "Jwt not yet valid"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
KEY_NOT_FOUND = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAILED = "Jwks remote fetch is failed"
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
RBAC_DENIED = "RBAC: access denied"


def token_check(
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict | None = None,
    workload: dict | None = None,
) -> external_auth_pb2.CheckRequest:
    """An Envoy-shaped CheckRequest; token goes into `authorization: Bearer <token>`."""
    request = http_check(method, path, JOB_SERVICE if workload is None else workload, authority=AUTHORITY)
    http_headers = request.attributes.request.http.headers
    if token is not None:
        http_headers["authorization"] = f"Bearer {token}"
    http_headers.update(headers or {})
    return request


@dataclass
class Outcome:
    """Everything a CheckResponse tells Envoy, flattened for assertions."""

    grpc_code: int
    kind: str | None
    http_status: int | None
    body: str | None
    headers: dict[str, str]  # set (ok_response) or sent to the client (denied_response); lower-case names
    overwrites: dict[str, bool]  # header -> Envoy replaces a value the client sent (rather than appending)
    headers_to_remove: list[str]
    query_parameters_to_remove: list[str]
    metadata: dict

    @property
    def allowed(self) -> bool:
        return self.grpc_code == GRPC_OK and self.kind == "ok_response"

    def describe(self) -> str:
        return (
            f"grpc={self.grpc_code} kind={self.kind} http={self.http_status} body={self.body!r} headers={self.headers} "
            f"remove={self.headers_to_remove} remove_params={self.query_parameters_to_remove} metadata={self.metadata}"
        )


def outcome_of(response: external_auth_pb2.CheckResponse) -> Outcome:
    kind = response.WhichOneof("http_response")
    headers: dict[str, str] = {}
    overwrites: dict[str, bool] = {}
    to_remove: list[str] = []
    params_to_remove: list[str] = []
    http_status = body = None
    if kind == "ok_response":
        options = response.ok_response.headers
        to_remove = [name.lower() for name in response.ok_response.headers_to_remove]
        params_to_remove = list(response.ok_response.query_parameters_to_remove)
    elif kind == "denied_response":
        options = response.denied_response.headers
        http_status = response.denied_response.status.code
        body = response.denied_response.body
    else:
        options = []
    for option in options:
        name = option.header.key.lower()
        headers[name] = option.header.value or option.header.raw_value.decode("utf-8", "replace")
        # The deprecated `append` (false: overwrite) wins when set; else append_action decides.
        overwrites[name] = not option.append.value if option.HasField("append") else option.append_action == OVERWRITE
    return Outcome(
        grpc_code=response.status.code,
        kind=kind,
        http_status=http_status,
        body=body,
        headers=headers,
        overwrites=overwrites,
        headers_to_remove=to_remove,
        query_parameters_to_remove=params_to_remove,
        metadata=json_format.MessageToDict(response.dynamic_metadata),
    )


def ask(authz, method: str, path: str, **options) -> Outcome:
    """Check one request (options: token, headers, workload) and flatten the answer."""
    return outcome_of(authz.Check(token_check(method, path, **options), timeout=CHECK_TIMEOUT_S))


def realm_of(path: str) -> str:
    return f"http://{AUTHORITY}{path}"


def assert_allowed(outcome: Outcome) -> None:
    assert outcome.allowed, outcome.describe()
    assert outcome.metadata.get("decision") == "allow", outcome.describe()


def assert_rbac_denied(outcome: Outcome) -> None:
    """Denied by the authorization policies: 403 `RBAC: access denied`, not a token problem."""
    assert (outcome.grpc_code, outcome.kind, outcome.http_status, outcome.body) == (
        GRPC_PERMISSION_DENIED,
        "denied_response",
        403,
        RBAC_DENIED,
    ), outcome.describe()


def assert_invalid_token(outcome: Outcome, messages: str | tuple[str, ...], realm: str | None) -> None:
    """401 with one of Envoy's messages and `www-authenticate: Bearer realm=..., error="invalid_token"`.

    realm None: check only the header's form (its realm holds the request's path and query).
    """
    allowed_messages = (messages,) if isinstance(messages, str) else messages
    assert (outcome.grpc_code, outcome.kind, outcome.http_status) == (GRPC_UNAUTHENTICATED, "denied_response", 401), outcome.describe()
    assert outcome.body in allowed_messages, outcome.describe()
    challenge = outcome.headers.get("www-authenticate")
    if realm is None:
        assert challenge and re.fullmatch(r'Bearer realm="http://[^"]+", error="invalid_token"', challenge), outcome.describe()
    else:
        assert challenge == f'Bearer realm="{realm}", error="invalid_token"', outcome.describe()
    assert outcome.metadata.get("decision") == "deny", outcome.describe()
    assert outcome.metadata.get("reason") == "invalid_token", outcome.describe()


# ---------------------------------------------------------------- Prometheus text

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        found = {key: value.replace('\\"', '"').replace("\\\\", "\\") for key, value in _LABEL.findall(match["labels"] or "")}
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match["value"])
    return total


def metrics_text(server) -> str:
    status, body = server.admin_get("/metrics")
    assert status == 200, body
    return body.decode()
