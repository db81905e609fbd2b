"""Browser single sign-on through real Envoy and its gRPC ext_authz (deploy/envoy/envoy-grpc.yaml):
a login challenge comes back as Envoy's denied_response, a 302 to the login for a browser
navigation and a 401 naming the login URL for a script; after the login at the real OIDC provider
of tests/oidc (on portcullis's HTTP door, as a route without ext_authz would serve it) the app
behind Envoy receives the identity headers.

The IdP, the policies, the sso settings and the cookie-keeping client come from tests/sso/conftest.py.
"""

from __future__ import annotations

import urllib.parse

import pytest
from envoy_harness import running_envoy
from harness import sso_helpers as load_sso_helpers

sso_helpers = load_sso_helpers()
provider = sso_helpers.provider  # the fixture: the OIDC provider and the policies naming it
APP_URL = "http://app1.sso.test/dashboard?tab=2"


@pytest.fixture(scope="module")
def signing_on(launch_portcullis, provider):
    """portcullis offering logins, and its HTTP door for the login endpoints."""
    return launch_portcullis(provider.policies, settings=provider.settings())


@pytest.fixture(scope="module")
def envoy_sso(shipped_envoy_config, upstream, signing_on, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("envoy-sso")
    yield from running_envoy(shipped_envoy_config, portcullis=signing_on.grpc_port, upstream=upstream.port, workdir=workdir, name="envoy-sso")


def through_envoy(envoy, browser, url: str, headers: dict):
    """A request for `url` sent to Envoy, with the browser's cookies for it."""
    parts = urllib.parse.urlsplit(url)
    cookie = browser.cookie_header(parts.hostname, parts.path)
    headers = {**headers, **({"Cookie": cookie} if cookie else {})}
    return browser.send(envoy.port, "GET", f"{parts.path}?{parts.query}", parts.netloc, headers)


def test_a_browser_navigation_through_envoy_is_sent_to_log_in_and_then_reaches_the_app_as_the_person(
    envoy_sso, signing_on, provider, fresh_upstream
):
    sso = provider.sso(signing_on.http_port)
    browser = sso.browser()
    status, headers, _ = through_envoy(envoy_sso, browser, APP_URL, {"Accept": sso_helpers.HTML})
    rd = urllib.parse.quote(APP_URL, safe="")
    assert status == 302
    assert headers["Location"] == f"http://{sso_helpers.AUTH_HOST}/oauth2/start?rd={rd}"
    assert not fresh_upstream.seen, "a refused request never reaches the app"

    callback = sso.log_in_at_idp(browser, sso.to_idp_url(browser, headers["Location"]))
    status, headers, _ = browser.get(callback, sso.idp_port)
    assert (status, headers["Location"]) == (302, APP_URL)

    status, _, _ = through_envoy(envoy_sso, browser, APP_URL, {"Accept": sso_helpers.HTML, "X-Auth-Request-User": "admin"})
    assert status == 200
    (seen,) = fresh_upstream.seen
    assert seen.values("x-auth-request-user") == ["0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"], "the client's copy is replaced"
    assert seen.values("x-auth-request-email") == ["alice@example.com"]
    assert seen.values("cookie") == [], "the session cookie never reaches the app"


def test_a_script_through_envoy_gets_401_naming_the_login_url(envoy_sso, signing_on, provider, fresh_upstream):
    browser = provider.sso(signing_on.http_port).browser()
    for case, headers in [
        ("XHR", {"Accept": sso_helpers.HTML, "X-Requested-With": "XMLHttpRequest"}),
        ("API call", {"Accept": "application/json"}),
    ]:
        status, answer, body = through_envoy(envoy_sso, browser, APP_URL, headers)
        assert status == 401, case
        assert answer[sso_helpers.LOGIN_URL_HEADER].startswith(f"http://{sso_helpers.AUTH_HOST}/oauth2/start?rd="), case
        assert "Location" not in answer, case
        assert body == b"login required", case
    assert not fresh_upstream.seen
