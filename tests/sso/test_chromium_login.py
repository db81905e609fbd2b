"""Browser single sign-on in a real browser: Debian's Chromium driven by Playwright, real Caddy
terminating TLS with a test certificate and asking portcullis's HTTP door (`forward_auth`), and the
real OIDC provider of tests/oidc with its login form (authorization code with PKCE).

Hosts: app1.sso.test and app2.sso.test are protected apps, auth.sso.test serves the login
endpoints; Chromium maps every `*.sso.test` name to 127.0.0.1 and resolves no other name, so
nothing leaves the machine. The IdP is http://127.0.0.1:PORT. Playwright downloads no browser:
it launches /usr/bin/chromium (Debian's `chromium`), or $CHROMIUM_BIN.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sso_shared import LOGIN_URL_HEADER
from harness import serving, stop_process
from tls_site import DOMAIN, IdentityApp, is_login_form, log_in_on_form, login_site, requested_urls, start_tls_caddy

SESSION_COOKIE = "__Secure-_portcullis_session"


@dataclass
class Site:
    """Everything behind https://*.sso.test:port, and the IdP."""

    port: int
    idp_base: str
    apps: dict[str, IdentityApp]

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}.{DOMAIN}:{self.port}{path}"


@pytest.fixture(scope="module")
def site(launch_portcullis, tmp_path_factory, test_certificate) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("chromium-sso")
    login = login_site(work, "traefik")
    port, idp = login.port, login.idp
    server = launch_portcullis(login.policies, settings=login.settings)
    apps = {name: IdentityApp(name) for name in ("app1", "app2")}
    with serving(apps["app1"]), serving(apps["app2"]):
        caddy = start_tls_caddy(work, test_certificate, port, server.http_port, {name: app.port for name, app in apps.items()})
        try:
            yield Site(port, idp.base, apps)
        finally:
            exits = {"caddy": stop_process(caddy.process), "idp": idp.stop()}
            assert exits == {"caddy": 0, "idp": 0}


def open_and_log_in(site: Site, context, app: str = "app1", path: str = "/"):
    """Open an app with no session: sent to the IdP's login form, log in, land on the app."""
    page = context.new_page()
    page.goto(site.url(app, path))
    assert is_login_form(page), page.url
    assert page.url.startswith(site.idp_base)
    log_in_on_form(page)
    page.wait_for_url(site.url(app, path))
    return page


def test_a_person_logs_in_once_in_chromium_and_the_second_app_knows_them_without_a_login_form(site, context):
    page = open_and_log_in(site, context, path="/dashboard?tab=2")
    assert page.inner_text("#x-auth-request-user") == "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"
    assert page.inner_text("#x-auth-request-email") == "alice@example.com"
    reached = site.apps["app1"].last("/dashboard?tab=2")
    assert reached.values("x-auth-request-email") == ["alice@example.com"]
    assert reached.values("x-auth-request-preferred-username") == ["alice"]
    assert "cookie" not in reached.names(), "the session cookie, the only cookie, is taken out of what the app receives"

    urls = requested_urls(context)
    second = context.new_page()
    answer = second.goto(site.url("app2"))
    assert answer.status == 200 and second.url == site.url("app2")
    assert second.inner_text("#x-auth-request-preferred-username") == "alice"
    elsewhere = [url for url in urls if not url.startswith(site.url("app2"))]
    assert elsewhere == [], "no login: neither the login endpoints nor the IdP were asked"
    assert site.apps["app2"].last("/").values("x-auth-request-user") == ["0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"]


def test_the_session_cookie_is_secure_http_only_lax_and_shared_by_the_whole_domain(site, context):
    open_and_log_in(site, context)
    cookies = {cookie["name"]: cookie for cookie in context.cookies(site.url("app2"))}
    session = cookies[SESSION_COOKIE]
    assert session["domain"] == f".{DOMAIN}"
    assert session["path"] == "/"
    assert session["secure"] is True and session["httpOnly"] is True and session["sameSite"] == "Lax"
    assert not [name for name in cookies if "_login_" in name], "the login's own cookie is gone once it ended"


def test_a_script_without_the_cookie_gets_401_with_the_login_url_and_with_it_gets_in(site, context):
    page = open_and_log_in(site, context)
    fetch = """async ([url, credentials]) => {
        const answer = await fetch(url, {credentials});
        return [answer.status, answer.headers.get('%s')];
    }""" % LOGIN_URL_HEADER
    status, login_url = page.evaluate(fetch, [site.url("app1", "/api/items"), "omit"])
    assert status == 401
    assert login_url.startswith(site.url("auth", "/oauth2/start?rd=")), login_url
    assert page.evaluate(fetch, [site.url("app1", "/api/items"), "same-origin"]) == [200, None]


def test_signing_out_once_sends_both_apps_to_the_login_form(site, context):
    page = open_and_log_in(site, context)
    answer = page.goto(site.url("auth", "/oauth2/sign_out"))
    assert answer.status == 200
    assert SESSION_COOKIE not in {cookie["name"] for cookie in context.cookies()}
    # The IdP remembers its own login until it is signed out there too (RP-initiated logout is
    # not done by portcullis): its end-session page and confirmation.
    page.goto(f"{site.idp_base}/realms/jobs/protocol/openid-connect/logout")
    page.click("button[value=yes]")
    page.wait_for_load_state()
    for app in ("app1", "app2"):
        reached_before = len(site.apps[app].seen)
        page.goto(site.url(app))
        assert is_login_form(page), (app, page.url)
        assert len(site.apps[app].seen) == reached_before, f"{app} was not reached"
