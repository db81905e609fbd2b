"""The shipped scopes example (policies/scopes.yaml, deploy/scopes/api-keys.yaml) against a real IdP.

Three callers, each holding some of the scopes `microservice-{a,b}:resource:{read,write}`: alice
with a JWT of the IdP, the IdP's `scopes-bot` with an opaque token (introspected), and the
shipped key file's bots with API keys. Each is allowed exactly what its scopes grant on the two
services (read: GET and HEAD, for any scope of the service's resources; write: every method) and
refused the rest with 403.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

import pytest
import yaml
from harness import REPO_ROOT
from jwt_checks import assert_allowed, assert_rbac_denied, ask
from jwt_policies import idp_rule, request_authentication

SERVICES = {"a": {"namespace": "shop", "app": "microservice-a"}, "b": {"namespace": "shop", "app": "microservice-b"}}
# The demo keys of deploy/scopes/api-keys.yaml (their plain text is in docs/credentials.md).
REPORT_BOT_KEY = "pk_scopes_demo_report_bot_do_not_use"  # microservice-a:resource:read
SYNC_BOT_KEY = "pk_scopes_demo_sync_bot_do_not_use"  # microservice-a:resource:write, microservice-b:resource:read


def scopes_bot_token(idp, scope: str) -> str:
    """An opaque access token of the IdP's `scopes-bot` (client credentials)."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope}).encode()
    request = urllib.request.Request(idp.token_endpoint, data=form)
    request.add_header("authorization", "Basic " + base64.b64encode(b"scopes-bot:bot-secret").decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["access_token"]


@pytest.fixture(scope="module")
def scopes_server(launch_jwt_server, idp, tmp_path_factory):
    """The shipped scopes.yaml, the IdP's JWTs mesh-wide, its opaque tokens introspected, the shipped key file."""
    secret = tmp_path_factory.mktemp("scopes") / "introspect-secret"
    secret.write_text("introspect-secret")
    settings = {
        "api_keys": {"files": [str(REPO_ROOT / "deploy" / "scopes" / "api-keys.yaml")]},
        "introspection": {"providers": [{"issuer": idp.issuer, "client_id": "portcullis-introspect", "client_secret_file": str(secret)}]},
    }
    mesh_wide = request_authentication([idp_rule(idp.issuer)], name="keycloak", namespace="istio-system")
    shipped = yaml.safe_load_all((REPO_ROOT / "policies" / "scopes.yaml").read_text())
    return launch_jwt_server("scopes", idp, mesh_wide, *shipped, settings=json.dumps(settings))


def credentials(idp) -> dict[str, dict]:
    """Each caller's request options: a bearer token or an API key header."""
    alice = idp.token("alice", scope="microservice-a:resource:read microservice-b:resource:write")
    return {
        "alice (JWT: a read, b write)": {"token": alice},
        "scopes-bot (opaque: b read)": {"token": scopes_bot_token(idp, "microservice-b:resource:read")},
        "report-bot (API key: a read)": {"headers": {"x-api-key": REPORT_BOT_KEY}},
        "sync-bot (API key: a write, b read)": {"headers": {"authorization": f"APIKey {SYNC_BOT_KEY}"}},
        "nobody": {},
    }


# caller, service, method -> allowed
EXPECTED = {
    "alice (JWT: a read, b write)": {("a", "GET"): True, ("a", "POST"): False, ("b", "GET"): True, ("b", "DELETE"): True},
    "scopes-bot (opaque: b read)": {("a", "GET"): False, ("a", "POST"): False, ("b", "HEAD"): True, ("b", "PUT"): False},
    "report-bot (API key: a read)": {("a", "GET"): True, ("a", "PATCH"): False, ("b", "GET"): False, ("b", "POST"): False},
    "sync-bot (API key: a write, b read)": {("a", "GET"): True, ("a", "POST"): True, ("b", "GET"): True, ("b", "POST"): False},
    "nobody": {("a", "GET"): False, ("b", "GET"): False},
}


def test_each_caller_is_allowed_exactly_the_scopes_it_holds_on_each_service(scopes_server, idp):
    options = credentials(idp)
    wrong = []
    for caller, cases in EXPECTED.items():
        for (service, method), allowed in cases.items():
            outcome = ask(scopes_server.authz, method, "/resources/1", workload=SERVICES[service], **options[caller])
            try:
                assert_allowed(outcome) if allowed else assert_rbac_denied(outcome)
            except AssertionError as error:
                wrong.append(f"{caller} {method} on {service}: {error}")
    assert not wrong, "\n".join(wrong)
