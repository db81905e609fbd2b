"""Browser single sign-on over real sockets: portcullis's HTTP door in Traefik's forward-auth mode,
the real OIDC provider of tests/oidc (authorization code with PKCE, its login form), and a small
cookie-keeping client standing in for the browser and for Traefik (tests/sso/conftest.py).
"""

from __future__ import annotations

import re
import urllib.parse

import pytest
from sso_shared import AUTH_HOST, LOGIN_URL_HEADER, SESSION_COOKIE, Cookie, Provider, Sso


@pytest.fixture(scope="module")
def sso(launch_portcullis, provider: Provider) -> Sso:
    server = launch_portcullis(provider.policies, settings=provider.settings())
    return provider.sso(server.http_port)


def test_a_person_logs_in_once_and_every_subdomain_knows_them_by_their_identity_headers(sso):
    browser = sso.browser()
    browser.cookies.append(Cookie("theme", "dark", "app1.sso.test", True, "/"))
    status, headers, _ = sso.navigate(browser, "http://app1.sso.test/dashboard?tab=2")
    assert status == 200
    assert headers["X-Auth-Request-User"] == "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"
    assert headers["X-Auth-Request-Email"] == "alice@example.com"
    assert headers["X-Auth-Request-Groups"] == "user"
    assert headers["X-Auth-Request-Preferred-Username"] == "alice"
    assert headers["X-Auth-User"] == "alice@example.com"
    assert headers["Cookie"] == "theme=dark", "the session cookie is taken out of what the app receives"
    assert SESSION_COOKIE not in headers.get("X-Envoy-Auth-Headers-To-Remove", "")
    status, headers, _ = browser.check("http://app2.sso.test/", extra={"X-Auth-Request-User": "admin"})
    assert status == 200, "another subdomain without a new login"
    assert headers["X-Auth-Request-Preferred-Username"] == "alice"
    assert headers["X-Auth-Request-User"] != "admin", "the client's copy is overwritten"
    assert "cookie" in headers["X-Envoy-Auth-Headers-To-Remove"].split(","), "only the session cookie: none goes on"


def test_claims_of_the_login_decide_as_for_tokens(sso):
    alice, admin = sso.browser(), sso.browser()
    assert sso.navigate(alice, "http://app1.sso.test/")[0] == 200
    assert alice.check("http://app1.sso.test/admin")[0] == 403, "logged in, not in the admin group: no new login"
    assert sso.navigate(admin, "http://app1.sso.test/admin", user="admin")[0] == 200


def test_signing_out_sends_the_person_to_log_in_again_on_every_subdomain(sso):
    browser = sso.browser()
    assert sso.navigate(browser, "http://app1.sso.test/")[0] == 200
    session = browser.value_of(SESSION_COOKIE)
    status, _, _ = browser.get(f"http://{AUTH_HOST}/oauth2/sign_out", sso.idp_port)
    assert status == 200
    assert browser.value_of(SESSION_COOKIE) is None
    for url in ("http://app1.sso.test/", "http://app2.sso.test/"):
        status, headers, _ = browser.check(url)
        assert status == 302 and "/oauth2/start?rd=" in headers["Location"], url
    # The old cookie, kept by a thief, opens nothing either.
    thief = sso.browser()
    thief.cookies.append(Cookie(SESSION_COOKIE, session, "sso.test", False, "/"))
    assert thief.check("http://app1.sso.test/")[0] == 302


def test_requests_that_are_not_browser_navigations_get_401_with_the_login_url(sso):
    browser = sso.browser()
    for case, kwargs in [
        ("XHR", {"extra": {"X-Requested-With": "XMLHttpRequest"}}),
        ("API call", {"accept": "application/json"}),
        ("form post", {"method": "POST"}),
    ]:
        status, headers, _ = browser.check("http://app1.sso.test/api", **kwargs)
        assert status == 401, case
        assert headers[LOGIN_URL_HEADER].startswith(f"http://{AUTH_HOST}/oauth2/start?rd="), case
    status, headers, _ = browser.check("http://app1.sso.test/public", extra={"X-Auth-Request-User": "admin"})
    assert status == 200, "a path the policies open needs no login"
    removed = headers["X-Envoy-Auth-Headers-To-Remove"].split(",")
    assert "x-auth-request-user" in removed and "x-auth-user" in removed, "client copies never reach the app"


def test_user_info_shows_the_signed_in_person(sso):
    browser = sso.browser()
    sso.navigate(browser, "http://app1.sso.test/")
    status, _, body = browser.get(f"http://{AUTH_HOST}/oauth2/userinfo", sso.idp_port)
    assert status == 200 and b'"preferred_username":"alice"' in body, body
    assert sso.browser().get(f"http://{AUTH_HOST}/oauth2/userinfo", sso.idp_port)[0] == 401


def test_a_redirect_target_outside_the_allowed_domains_starts_no_login(sso):
    browser = sso.browser()
    for target in ["//evil.example", "/\\evil.example", "http://evilsso.test/", "http://sso.test@evil.example/"]:
        rd = urllib.parse.quote(target, safe="")
        status, _, _ = browser.get(f"http://{AUTH_HOST}/oauth2/start?rd={rd}", sso.idp_port)
        assert status == 400, target
    assert browser.cookies == [], "no login transaction, no cookie"


def test_a_callback_with_another_state_or_from_another_browser_is_refused(sso):
    starter = sso.browser()
    callback = sso.log_in_at_idp(starter, sso.to_idp_url(starter, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"))
    # The code and state, finished by a browser that did not start the login (login CSRF).
    other = sso.browser()
    status, _, _ = other.get(callback, sso.idp_port)
    assert status == 400
    assert other.value_of(SESSION_COOKIE) is None
    # The state changed: no such login.
    tampered = re.sub(r"state=[^&]+", "state=" + "A" * 43, callback)
    status, _, _ = starter.get(tampered, sso.idp_port)
    assert status == 400 and starter.value_of(SESSION_COOKIE) is None
    # A state that is no state at all never reaches a cookie header.
    injected = re.sub(r"state=[^&]+", "state=" + urllib.parse.quote("x; Domain=evil.example"), callback)
    status, headers, _ = starter.get(injected, sso.idp_port)
    assert status == 400 and headers.get_all("Set-Cookie") is None


def test_a_replayed_callback_opens_no_second_session(sso):
    browser = sso.browser()
    callback = sso.log_in_at_idp(browser, sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"))
    saved = list(browser.cookies)
    status, _, _ = browser.get(callback, sso.idp_port)
    assert status == 302
    first_session = browser.value_of(SESSION_COOKIE)
    # The same request again, with the login's cookie as it was (a retry, or a replay).
    replayer = sso.browser()
    replayer.cookies = saved
    status, _, _ = replayer.get(callback, sso.idp_port)
    assert status == 400
    assert replayer.value_of(SESSION_COOKIE) is None
    assert browser.check("http://app1.sso.test/")[0] == 200, "the first session still works"
    assert first_session


def test_a_tampered_or_unknown_session_cookie_is_treated_as_no_session(sso):
    browser = sso.browser()
    assert sso.navigate(browser, "http://app1.sso.test/")[0] == 200
    real = browser.value_of(SESSION_COOKIE)
    flipped = ("B" if real[0] != "B" else "C") + real[1:]
    for value in [flipped, "A" * 43, "not-a-session", real + "A"]:
        forger = sso.browser()
        forger.cookies.append(Cookie(SESSION_COOKIE, value, "sso.test", False, "/"))
        assert forger.check("http://app1.sso.test/")[0] == 302, value


def test_two_logins_interleaved_in_two_tabs_both_succeed(sso):
    browser = sso.browser()
    tab1 = sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=" + urllib.parse.quote("http://app1.sso.test/one", safe=""))
    tab2 = sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=" + urllib.parse.quote("http://app2.sso.test/two", safe=""))
    callback2 = sso.log_in_at_idp(browser, tab2)
    callback1 = sso.log_in_at_idp(browser, tab1)
    for callback, target in [(callback2, "http://app2.sso.test/two"), (callback1, "http://app1.sso.test/one")]:
        status, headers, body = browser.get(callback, sso.idp_port)
        assert status == 302, body
        assert headers["Location"] == target
    assert browser.check("http://app1.sso.test/one")[0] == 200


def test_a_planted_session_id_is_replaced_at_login_and_ends(sso):
    attacker = sso.browser()
    assert sso.navigate(attacker, "http://app1.sso.test/", user="admin")[0] == 200
    planted = attacker.value_of(SESSION_COOKIE)
    victim = sso.browser()
    victim.cookies.append(Cookie(SESSION_COOKIE, planted, "sso.test", False, "/"))
    victim.cookies.append(Cookie("x", "1", "app2.sso.test", True, "/"))
    # The victim is let in as the attacker at first (the cookie is valid), then logs in as alice.
    status, headers, _ = victim.check("http://app2.sso.test/")
    assert status == 200 and headers["X-Auth-Request-Preferred-Username"] == "admin"
    callback = sso.log_in_at_idp(victim, sso.to_idp_url(victim, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"), user="alice")
    assert victim.get(callback, sso.idp_port)[0] == 302
    assert victim.value_of(SESSION_COOKIE) not in (None, planted), "a new id at login"
    assert victim.check("http://app2.sso.test/")[1]["X-Auth-Request-Preferred-Username"] == "alice"
    assert attacker.check("http://app1.sso.test/")[0] == 302, "the planted session ended"


def test_the_session_cookie_holds_only_an_opaque_id_for_the_whole_cookie_domain(sso):
    browser = sso.browser()
    callback = sso.log_in_at_idp(browser, sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"))
    login_cookie = next(c for c in browser.cookies if c.name.startswith(f"{SESSION_COOKIE}_login_"))
    assert login_cookie.host_only and login_cookie.path == "/oauth2/", "the login's own cookie stays with the endpoints"
    status, headers, _ = browser.get(callback, sso.idp_port)
    assert status == 302
    set_cookies = headers.get_all("Set-Cookie")
    session = next(line for line in set_cookies if line.startswith(f"{SESSION_COOKIE}="))
    value, *attributes = [part.strip() for part in session.split(";")]
    assert re.fullmatch(rf"{SESSION_COOKIE}=[A-Za-z0-9_-]{{43}}", value), "256 random bits, nothing else"
    assert {"Path=/", "HttpOnly", "SameSite=Lax", "Domain=sso.test"} <= set(attributes), attributes
    assert any(line.startswith(f"{login_cookie.name}=;") and "Max-Age=0" in line for line in set_cookies), "the login's cookie is cleared"
