"""One table of requests, sent through every door and every proxy: the same request gets the same decision.

The policies are the shipped ones (policies/job-board.yaml, mesh-wide.yaml and keycloak.yaml with
its issuer moved to the test IdP), plus a second issuer whose keys the test owns (TEST_ISSUER,
inline `jwks`), for tokens no IdP would issue. Every request is for the job-service workload
(namespace job-service, label app=job-service). `token` names an entry of the `tokens` fixture.
"""

from __future__ import annotations

from dataclasses import dataclass

RBAC_DENIED = "RBAC: access denied"
BAD_REQUEST = "Bad Request"
JWT_EXPIRED = "Jwt is expired"
JWT_BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
JWT_VERIFICATION_FAILS = "Jwt verification fails"
JWT_UNKNOWN_ISSUER = "Jwt issuer is not configured"

# The output headers of policies/keycloak.yaml; the test-issuer rule has the same ones.
IDENTITY_HEADERS = ("x-jwt-payload", "x-user", "x-user-id")

HOST = "jobs.example.com"


@dataclass(frozen=True)
class Case:
    """A request and portcullis's decision about it (status 200: allow)."""

    id: str
    method: str
    path: str
    status: int
    body: str = ""  # the deny body; "" on allow
    token: str | None = None  # a key of the `tokens` fixture, sent as `Authorization: Bearer`
    user: str | None = None  # on allow with a token: the x-user the upstream gets
    keeps_token: bool = False  # the token's rule has forwardOriginalToken: true


CASES = [
    # Anyone may read jobs and job categories.
    Case("anonymous read", "GET", "/api/jobs", 200),
    Case("anonymous read with query", "GET", "/api/jobs?page=2", 200),
    Case("anonymous read of a category", "GET", "/api/jobcategories/3", 200),
    # Changes need a token; job categories need the realm role admin.
    Case("anonymous POST", "POST", "/api/jobs", 403, RBAC_DENIED),
    Case("alice POST", "POST", "/api/jobs", 200, token="alice", user="alice"),
    Case("alice DELETE", "DELETE", "/api/jobs/7", 200, token="alice", user="alice"),
    Case("alice POST category", "POST", "/api/jobcategories", 403, RBAC_DENIED, token="alice"),
    Case("admin POST category", "POST", "/api/jobcategories", 200, token="admin", user="admin"),
    Case("test issuer POST", "POST", "/api/jobs", 200, token="tester", user="tester", keeps_token=True),
    # Mesh-wide DENY and paths no rule allows, with or without a token.
    Case("debug endpoint", "GET", "/debug/x", 403, RBAC_DENIED),
    Case("debug endpoint with token", "GET", "/debug/x", 403, RBAC_DENIED, token="admin"),
    Case("outside allowed paths", "GET", "/", 403, RBAC_DENIED),
    # Tokens that fail: 401, Envoy's wording, www-authenticate.
    Case("expired token", "GET", "/api/jobs", 401, JWT_EXPIRED, token="expired"),
    Case("forged token", "POST", "/api/jobs", 401, JWT_VERIFICATION_FAILS, token="forged"),
    Case("not a JWT", "GET", "/api/jobs", 401, JWT_BAD_FORMAT, token="garbage"),
    Case("unknown issuer", "GET", "/api/jobs", 401, JWT_UNKNOWN_ISSUER, token="stranger"),
    # Path tricks, as an attacker sends them.
    Case("dot-dot", "GET", "/api/jobs/../debug/x", 403, RBAC_DENIED),
    Case("encoded dot-dot", "GET", "/api/jobs/%2e%2e/debug/x", 403, RBAC_DENIED),
    Case("dot-dot twice", "GET", "/api/jobs/../../debug/x", 403, RBAC_DENIED),
    Case("backslashes", "GET", "/api/jobs\\..\\..\\debug\\x", 403, RBAC_DENIED),
    Case("double slash", "GET", "//debug/x", 403, RBAC_DENIED),
    Case("inner double slash", "GET", "/api//debug/x", 403, RBAC_DENIED),
    Case("encoded slashes", "GET", "/api/jobs%2F..%2F..%2Fdebug%2Fx", 403, RBAC_DENIED),
    Case("dot-dot with parameter", "GET", "/api/jobs/..;/debug/x", 400, BAD_REQUEST),
    Case("bad escape", "GET", "/api/jobs%zz", 400, BAD_REQUEST),
    Case("NUL byte", "GET", "/api/jobs%00", 400, BAD_REQUEST),
    Case("dot-dot into an allowed path", "GET", "/api/x/../%6aobs?page=2", 200),
]

# A workload that refuses one client address (and one path): shows which address the HTTP door
# takes as the source. The untrusting door names it by host, through its workloads table.
BLOCKED_SOURCE = "198.51.100.7"
PATH_PREFIX = "/authz"  # http_path_prefix of the untrusting door
SOURCE_CHECK_HOST = "source-check.example"
SOURCE_ADDRESS_POLICY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "block-one-client", "namespace": "source-check"},
    "spec": {
        "action": "DENY",
        "rules": [{"from": [{"source": {"ipBlocks": [f"{BLOCKED_SOURCE}/32"]}}]}, {"to": [{"operation": {"paths": ["/blocked"]}}]}],
    },
}

ALLOWED = [case for case in CASES if case.status == 200]
DENIED = [case for case in CASES if case.status != 200]


def ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]
