"""Policy sets of the JWT suite: the shipped job-board and mesh-wide policies plus a RequestAuthentication."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from harness import REPO_ROOT
from jwt_tokens import SigningKey, jwks

SHIPPED_POLICIES = REPO_ROOT / "policies"

PAYLOAD_HEADER = "x-jwt-payload"
USER_HEADER = "x-user"
ROLES_HEADER = "x-roles"  # a list claim: never a header
VERIFIED_HEADER = "x-email-verified"  # a boolean claim
ISSUED_AT_HEADER = "x-issued-at"  # a number claim
ACCESS_HEADER = "x-realm-access"  # an object claim: never a header
OUTPUT_HEADERS = (PAYLOAD_HEADER, USER_HEADER, ROLES_HEADER, VERIFIED_HEADER, ISSUED_AT_HEADER, ACCESS_HEADER)


# ---------------------------------------------------------------- policy documents


def idp_rule(issuer: str, **fields) -> dict:
    """A jwtRules entry for a remote issuer (keys by OIDC discovery), with the suite's output headers."""
    return {
        "issuer": issuer,
        "outputPayloadToHeader": PAYLOAD_HEADER,
        "outputClaimToHeaders": [
            {"header": USER_HEADER, "claim": "preferred_username"},
            {"header": ROLES_HEADER, "claim": "realm_access.roles"},
            {"header": VERIFIED_HEADER, "claim": "email_verified"},
            {"header": ISSUED_AT_HEADER, "claim": "iat"},
            {"header": ACCESS_HEADER, "claim": "realm_access"},
        ],
        **fields,
    }


def inline_rule(issuer: str, *keys: SigningKey, **fields) -> dict:
    """A jwtRules entry whose keys are written in the policy (`jwks`, a JSON string)."""
    return {**idp_rule(issuer), "jwks": json.dumps(jwks(*keys)), **fields}


def request_authentication(rules: list[dict], name: str = "jwt", namespace: str = "job-service", selector: dict | None = None) -> dict:
    spec: dict = {"jwtRules": rules}
    if namespace != "istio-system":
        spec["selector"] = {"matchLabels": selector or {"app": "job-service"}}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def write_policy_dir(directory: Path, *documents: dict) -> Path:
    """The shipped job-board.yaml and mesh-wide.yaml, and request-authentication.yaml with documents."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("job-board.yaml", "mesh-wide.yaml"):
        shutil.copy(SHIPPED_POLICIES / name, directory / name)
    (directory / "request-authentication.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return directory
