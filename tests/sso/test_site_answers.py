"""Each site of `sso.sites` chooses how its anonymous visitors are asked to log in (`anonymous`), over
real sockets: portcullis's HTTP door in Traefik's forward-auth mode, asked as Traefik asks it.
"""

from __future__ import annotations

import pytest
from sso_shared import AUTH_HOST, LOGIN_URL_HEADER, Provider, Sso

SITES = """  sites:
  - {host: api.sso.test, anonymous: unauthorized}
  - {host: legacy.sso.test, anonymous: redirect_always}
  - .sso.test
"""
LOGIN_START = f"http://{AUTH_HOST}/oauth2/start?rd="
NAVIGATION = {}
XHR = {"extra": {"X-Requested-With": "XMLHttpRequest"}}
API_CALL = {"accept": "application/json"}
FORM_POST = {"method": "POST"}


@pytest.fixture(scope="module")
def sso(launch_portcullis, provider: Provider) -> Sso:
    settings = provider.settings()
    assert "  sites: [.sso.test]\n" in settings
    server = launch_portcullis(provider.policies, settings=settings.replace("  sites: [.sso.test]\n", SITES))
    return provider.sso(server.http_port)


def redirected(answer) -> bool:
    status, headers, _ = answer
    assert status in (302, 401), status
    if status == 302:
        assert headers["Location"].startswith(LOGIN_START) and LOGIN_URL_HEADER not in headers
        return True
    assert headers[LOGIN_URL_HEADER].startswith(LOGIN_START) and "Location" not in headers
    return False


@pytest.mark.parametrize(
    ("host", "redirects"),
    [
        ("app1.sso.test", {"navigation": True, "XHR": False, "API call": False, "form post": False}),
        ("api.sso.test", {"navigation": False, "XHR": False, "API call": False, "form post": False}),
        ("legacy.sso.test", {"navigation": True, "XHR": True, "API call": True, "form post": True}),
    ],
    ids=["a site by default redirects navigations only", "an unauthorized site answers 401 to all", "a redirect_always site redirects all"],
)
def test_each_site_answers_anonymous_requests_as_it_chose(sso, host, redirects):
    browser = sso.browser()
    cases = {"navigation": NAVIGATION, "XHR": XHR, "API call": API_CALL, "form post": FORM_POST}
    answered = {case: redirected(browser.check(f"http://{host}/items", **kwargs)) for case, kwargs in cases.items()}
    assert answered == redirects


def test_a_site_that_answers_401_still_lets_a_signed_in_person_in(sso):
    browser = sso.browser()
    assert sso.navigate(browser, "http://app1.sso.test/")[0] == 200
    status, headers, _ = browser.check("http://api.sso.test/items", accept="application/json")
    assert status == 200
    assert headers["X-Auth-Request-Preferred-Username"] == "alice"
