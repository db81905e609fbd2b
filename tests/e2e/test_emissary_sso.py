"""Browser single sign-on through Emissary-ingress, which cannot run here: deploy/emissary/*.yaml are
checked against Emissary's getambassador.io/v3alpha1 AuthService and Mapping fields (as
pkg/api/getambassador.io/v3alpha1/{authservice,mapping}_types.go define them), and the exchange is
replayed as Emissary's Envoy makes it with a gRPC AuthService: its ext_authz filter (grpc_service,
transport_api_version V3, no header lists) sends every request header, the pseudo-headers and
Envoy's own (x-forwarded-proto, x-forwarded-for, x-request-id) in the Check, and a Mapping's
`auth_context_extensions` as its context_extensions; the login endpoints are reached over the
`bypass_auth` Mapping, on portcullis's HTTP door, and the real OIDC provider of tests/oidc logs in.
"""

from __future__ import annotations

import re
import time
import urllib.parse

import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from harness import REPO_ROOT, open_grpc_channel
from harness import sso_helpers as load_sso_helpers

sso_helpers = load_sso_helpers()
provider = sso_helpers.provider  # the fixture: the OIDC provider and the policies naming it
EMISSARY = REPO_ROOT / "deploy/emissary"
API_VERSION = "getambassador.io/v3alpha1"
# The spec fields of Emissary's v3alpha1 types (authservice_types.go, mapping_types.go); a key
# outside them is a typo Emissary would reject or ignore.
AUTH_SERVICE_FIELDS = {
    "ambassador_id", "auth_service", "path_prefix", "tls", "proto", "timeout_ms", "allowed_request_headers",
    "allowed_authorization_headers", "add_auth_headers", "allow_request_body", "add_linkerd_headers",
    "failure_mode_allow", "include_body", "status_on_error", "protocol_version", "stats_name", "circuit_breakers",
}  # fmt: skip
MAPPING_FIELDS = {
    "ambassador_id", "prefix", "prefix_regex", "prefix_exact", "service", "add_request_headers", "add_response_headers",
    "add_linkerd_headers", "auto_host_rewrite", "case_sensitive", "dns_type", "docs", "enable_ipv4", "enable_ipv6",
    "circuit_breakers", "keepalive", "cors", "retry_policy", "respect_dns_ttl", "grpc", "host_redirect", "host_rewrite",
    "method", "method_regex", "outlier_detection", "path_redirect", "prefix_redirect", "regex_redirect",
    "redirect_response_code", "priority", "precedence", "cluster_tag", "remove_request_headers",
    "remove_response_headers", "resolver", "rewrite", "regex_rewrite", "shadow", "connect_timeout_ms",
    "cluster_idle_timeout_ms", "cluster_max_connection_lifetime_ms", "timeout_ms", "idle_timeout_ms", "tls",
    "use_websocket", "allow_upgrade", "weight", "bypass_auth", "auth_context_extensions",
    "bypass_error_response_overrides", "error_response_overrides", "modules", "host", "host_regex", "hostname",
    "headers", "regex_headers", "labels", "envoy_override", "load_balancer", "query_parameters",
    "regex_query_parameters", "stats_name",
}  # fmt: skip
BOOLEAN_FIELDS = {"bypass_auth", "failure_mode_allow", "allow_request_body", "add_linkerd_headers", "prefix_regex", "prefix_exact"}
# Emissary rewrites a Mapping's prefix to this unless the Mapping names its own `rewrite`.
EMISSARY_DEFAULT_REWRITE = "/"
GRPC_OK, GRPC_UNAUTHENTICATED = 0, 16
ALICE = "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"
APP_URL = "https://grafana.sso.test/dashboard?tab=2"
GRAFANA = {"namespace": "grafana", "app": "grafana"}


def documents(name: str) -> list[dict]:
    return [document for document in yaml.safe_load_all((EMISSARY / name).read_text()) if document is not None]


def shipped(kind: str) -> list[dict]:
    return [document for name in ("auth-service.yaml", "sso.yaml") for document in documents(name) if document["kind"] == kind]


def login_mapping() -> dict:
    (login,) = [mapping["spec"] for mapping in shipped("Mapping") if mapping["spec"].get("bypass_auth")]
    return login


def default_endpoint_prefix() -> str:
    """`sso.endpoint_prefix`'s default, as docs/configuration.md states it."""
    (row,) = [line for line in (REPO_ROOT / "docs/configuration.md").read_text().splitlines() if line.startswith("| `sso.endpoint_prefix`")]
    return re.findall(r"`([^`]*)`", row.split("|")[2])[0]


# ---------------------------------------------------------------- the files


@pytest.mark.parametrize("name", ["auth-service.yaml", "sso.yaml"])
def test_every_emissary_resource_uses_only_fields_of_its_v3alpha1_schema(name):
    allowed = {"AuthService": AUTH_SERVICE_FIELDS, "Mapping": MAPPING_FIELDS}
    for document in documents(name):
        assert document["apiVersion"] == API_VERSION, document
        assert document["metadata"]["name"] and document["metadata"]["namespace"]
        spec = document["spec"]
        assert set(spec) <= allowed[document["kind"]], set(spec) - allowed[document["kind"]]
        assert all(isinstance(spec[key], bool) for key in BOOLEAN_FIELDS & set(spec)), spec
        if document["kind"] == "Mapping":
            assert isinstance(spec["prefix"], str) and spec["prefix"].startswith("/") and spec["service"], spec
            extensions = spec.get("auth_context_extensions", {})
            assert all(isinstance(key, str) and isinstance(value, str) for key, value in extensions.items()), spec


def test_the_auth_service_is_the_grpc_door_and_fails_closed():
    (auth_service,) = shipped("AuthService")
    spec = auth_service["spec"]
    assert (spec["proto"], spec["protocol_version"], spec["failure_mode_allow"]) == ("grpc", "v3", False)
    assert spec["auth_service"].endswith(":9001"), "the gRPC door's port"
    assert isinstance(spec["timeout_ms"], int) and 0 < spec["timeout_ms"] <= 1000


def test_the_login_mapping_bypasses_auth_and_keeps_the_endpoint_prefix_on_the_http_door():
    login = login_mapping()
    prefix = default_endpoint_prefix()
    assert prefix == "/oauth2/"
    assert login["prefix"] == prefix
    assert login.get("rewrite", EMISSARY_DEFAULT_REWRITE) == prefix, "Emissary's default rewrite would strip the prefix"
    assert login["service"].endswith(":8000"), "the HTTP door's port"
    redirect_url = "https://auth.example.com/oauth2/callback"  # docs/sso.md's minimal settings
    assert f"redirect_url: {redirect_url}" in (REPO_ROOT / "docs/sso.md").read_text()
    assert login["hostname"] == urllib.parse.urlsplit(redirect_url).hostname


def test_every_app_mapping_is_checked_and_names_its_workload():
    apps = [mapping["spec"] for mapping in shipped("Mapping") if not mapping["spec"].get("bypass_auth")]
    assert apps
    for spec in apps:
        assert "namespace" in spec["auth_context_extensions"], spec
        assert spec["hostname"].endswith(".example.com"), "a site under the cookie domain"


# ---------------------------------------------------------------- the exchange


@pytest.fixture(scope="module")
def signing_on(launch_portcullis, provider):
    """portcullis offering logins: the gRPC door checks, the HTTP door serves the login Mapping."""
    return launch_portcullis(provider.policies, settings=provider.settings())


@pytest.fixture(scope="module")
def authz(signing_on):
    channel = open_grpc_channel(signing_on.grpc_target)
    yield external_auth_pb2_grpc.AuthorizationStub(channel)
    channel.close()


def emissary_check(url: str, headers: dict[str, str], workload: dict[str, str] = GRAFANA) -> external_auth_pb2.CheckRequest:
    """The Check Emissary's Envoy sends for a GET of `url` arriving over TLS: no encode_raw_headers,
    so the plain `headers` map, the pseudo-headers among them; the Mapping's auth_context_extensions."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.time.FromNanoseconds(time.time_ns())
    http = request.attributes.request.http
    http.id, http.method, http.path, http.host = "7301", "GET", target, parts.netloc
    http.scheme, http.protocol = parts.scheme, "HTTP/1.1"
    http.headers.update(
        {
            ":authority": parts.netloc,
            ":method": "GET",
            ":path": target,
            ":scheme": parts.scheme,
            "x-forwarded-proto": parts.scheme,
            "x-forwarded-for": "203.0.113.7",
            "x-request-id": "2f1e9c4a-3f55-4a8e-9d55-5c1b7e0f6a21",
            "user-agent": "Mozilla/5.0",
            **headers,
        }
    )
    request.attributes.context_extensions.update(workload)
    return request


def header_values(options) -> dict[str, str]:
    return {option.header.key.lower(): option.header.value for option in options}


def over_the_login_mapping(url: str) -> str:
    """The URL as portcullis's HTTP door receives it through the `bypass_auth` Mapping."""
    login = login_mapping()
    parts = urllib.parse.urlsplit(url)
    assert parts.path.startswith(login["prefix"]), url
    rewritten = login.get("rewrite", EMISSARY_DEFAULT_REWRITE) + parts.path[len(login["prefix"]) :]
    return urllib.parse.urlunsplit(parts._replace(path=rewritten))


def test_emissary_sends_a_navigation_to_log_in_and_tells_a_script_where(authz):
    navigation = authz.Check(emissary_check(APP_URL, {"accept": sso_helpers.HTML}), timeout=5)
    assert navigation.status.code == GRPC_UNAUTHENTICATED
    assert navigation.denied_response.status.code == 302
    rd = urllib.parse.quote(APP_URL, safe="")
    assert header_values(navigation.denied_response.headers)["location"] == f"http://{sso_helpers.AUTH_HOST}/oauth2/start?rd={rd}"

    for case, headers in [
        ("XHR", {"accept": sso_helpers.HTML, "x-requested-with": "XMLHttpRequest"}),
        ("API call", {"accept": "application/json"}),
    ]:
        script = authz.Check(emissary_check(APP_URL, headers), timeout=5)
        assert script.denied_response.status.code == 401, case
        answer = header_values(script.denied_response.headers)
        assert "location" not in answer, case
        assert answer[sso_helpers.LOGIN_URL_HEADER].startswith(f"http://{sso_helpers.AUTH_HOST}/oauth2/start?rd="), case


def test_after_a_login_over_the_bypass_mapping_emissary_is_told_who_the_person_is_and_to_drop_the_session_cookie(
    authz, signing_on, provider
):
    sso = provider.sso(signing_on.http_port)
    browser = sso.browser()
    navigation = authz.Check(emissary_check(APP_URL, {"accept": sso_helpers.HTML}), timeout=5)
    start = over_the_login_mapping(header_values(navigation.denied_response.headers)["location"])
    callback = sso.log_in_at_idp(browser, sso.to_idp_url(browser, start))
    status, headers, _ = browser.get(over_the_login_mapping(callback), sso.idp_port)
    assert (status, headers["Location"]) == (302, APP_URL)

    session = browser.cookie_header("grafana.sso.test", "/dashboard")
    assert sso_helpers.SESSION_COOKIE in session
    sent = {"accept": sso_helpers.HTML, "cookie": f"theme=dark; {session}", "x-auth-request-user": "admin"}
    allowed = authz.Check(emissary_check(APP_URL, sent), timeout=5)
    assert allowed.status.code == GRPC_OK
    to_app = header_values(allowed.ok_response.headers)
    assert to_app["x-auth-request-user"] == ALICE, "the client's copy is replaced"
    assert to_app["x-auth-request-email"] == "alice@example.com"
    assert to_app["x-auth-request-preferred-username"] == "alice"
    assert to_app["cookie"] == "theme=dark", "the session cookie never reaches the app"
    assert browser.value_of(sso_helpers.SESSION_COOKIE) not in " ".join(to_app.values())
