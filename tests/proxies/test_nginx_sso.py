"""Browser single sign-on through real nginx running deploy/nginx/nginx-sso.conf: portcullis in
nginx mode answers an anonymous navigation with 401 (auth_request understands no redirect), the
recipe turns it into the 302 to the login; the login endpoints are reached through nginx's
`/oauth2/` location; after the login at the real OIDC provider of tests/oidc the app receives
the identity headers and never the session cookie.

The IdP, the policies, the sso settings and the cookie-keeping client come from tests/sso/conftest.py;
every request to an `*.sso.test` host is sent to nginx with the host in its headers.
"""

from __future__ import annotations

import urllib.parse

import pytest
from harness import free_port, serving, stop_process
from harness import sso_helpers as load_sso_helpers
from proxy_harness import SHIPPED_NGINX_SSO_CONFIG, RecordingUpstream, render_nginx_sso_config, start_nginx

sso_helpers = load_sso_helpers()
provider = sso_helpers.provider  # the fixture: the OIDC provider and the policies naming it
APP_URL = "http://app1.sso.test/dashboard?tab=2"


@pytest.fixture(scope="module")
def signing_on(launch_portcullis, provider):
    """portcullis offering logins, its HTTP door in nginx mode."""
    settings = provider.settings()
    assert settings.startswith("http_mode: traefik\n")
    return launch_portcullis(provider.policies, settings=settings.replace("http_mode: traefik", "http_mode: nginx", 1))


@pytest.fixture(scope="module")
def app():
    with serving(RecordingUpstream()) as server:
        yield server


@pytest.fixture(scope="module")
def nginx_sso(signing_on, app, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nginx-sso")
    port = free_port()
    config = render_nginx_sso_config(
        SHIPPED_NGINX_SSO_CONFIG.read_text(), listen=port, portcullis=signing_on.http_port, upstream=app.port, workdir=workdir
    )
    proxy = start_nginx(config, port, workdir, "nginx-sso")
    yield proxy
    stop_process(proxy.process)


def through_nginx(nginx, browser, url: str, headers: dict):
    """A request for `url` sent to nginx, with the browser's cookies for it."""
    parts = urllib.parse.urlsplit(url)
    cookie = browser.cookie_header(parts.hostname, parts.path)
    headers = {**headers, **({"Cookie": cookie} if cookie else {})}
    return browser.send(nginx.port, "GET", f"{parts.path}?{parts.query}", parts.netloc, headers)


def test_a_navigation_through_nginx_is_sent_to_log_in_and_then_reaches_the_app_as_the_person(nginx_sso, provider, app):
    app.seen.clear()
    # The login endpoints on auth.sso.test go through nginx too (its /oauth2/ location).
    sso = provider.sso(nginx_sso.port)
    browser = sso.browser()
    status, headers, _ = through_nginx(nginx_sso, browser, APP_URL, {"Accept": sso_helpers.HTML})
    assert status == 302
    assert headers["Location"] == f"http://{sso_helpers.AUTH_HOST}/oauth2/start?rd={urllib.parse.quote(APP_URL, safe='')}"
    assert not app.seen, "a refused request never reaches the app"

    callback = sso.log_in_at_idp(browser, sso.to_idp_url(browser, headers["Location"]))
    status, headers, _ = browser.get(callback, sso.idp_port)
    assert (status, headers["Location"]) == (302, APP_URL)
    assert browser.value_of(sso_helpers.SESSION_COOKIE), "the session cookie, set through nginx"

    browser.cookies.append(sso_helpers.Cookie("theme", "dark", "app1.sso.test", True, "/"))
    status, _, _ = through_nginx(nginx_sso, browser, APP_URL, {"Accept": sso_helpers.HTML, "X-Auth-Request-User": "admin"})
    assert status == 200
    (seen,) = app.seen
    assert seen.values("x-auth-request-user") == ["0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"], "the client's copy is replaced"
    assert seen.values("x-auth-request-email") == ["alice@example.com"]
    assert seen.values("x-auth-request-preferred-username") == ["alice"]
    assert seen.values("x-auth-user") == ["alice@example.com"]
    assert seen.values("cookie") == ["theme=dark"], "the session cookie never reaches the app"


def test_portcullis_in_nginx_mode_answers_a_navigation_with_401_naming_the_login_in_location(signing_on, provider):
    browser = provider.sso(signing_on.http_port).browser()
    headers = {"X-Original-URI": "/dashboard", "X-Original-Method": "GET", "Accept": sso_helpers.HTML}
    status, answer, _ = browser.send(signing_on.http_port, "GET", "/?namespace=job-service", "app1.sso.test", headers)
    assert status == 401, "auth_request would turn a 302 into a 500"
    assert answer["Location"] == f"http://{sso_helpers.AUTH_HOST}/oauth2/start?rd=http%3A%2F%2Fapp1.sso.test%2Fdashboard"
    # Over TLS, nginx names its own scheme: the login comes back to the https:// URL.
    headers["X-Forwarded-Proto"] = "https"
    status, answer, _ = browser.send(signing_on.http_port, "GET", "/?namespace=job-service", "app1.sso.test", headers)
    assert status == 401
    assert answer["Location"].endswith("rd=https%3A%2F%2Fapp1.sso.test%2Fdashboard")


def test_a_script_through_nginx_gets_401_naming_the_login_url(nginx_sso, provider, app):
    app.seen.clear()
    browser = provider.sso(nginx_sso.port).browser()
    for case, headers in [
        ("XHR", {"Accept": sso_helpers.HTML, "X-Requested-With": "XMLHttpRequest"}),
        ("API call", {"Accept": "application/json"}),
    ]:
        status, answer, body = through_nginx(nginx_sso, browser, APP_URL, headers)
        assert status == 401, case
        assert answer[sso_helpers.LOGIN_URL_HEADER].startswith(f"http://{sso_helpers.AUTH_HOST}/oauth2/start?rd="), case
        assert "Location" not in answer, case
        assert body == b"login required", case
    assert not app.seen

