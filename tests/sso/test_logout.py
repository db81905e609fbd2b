"""Logout at the provider: sign-out sent on to the provider's end_session_endpoint (RP-initiated
logout), and the provider's back-channel logout tokens ending sessions, in memory and across two
replicas sharing a real Redis. The real OIDC provider of tests/oidc, the cookie-keeping client of
tests/sso/conftest.py, portcullis in Traefik's forward-auth mode.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager

import pytest
from sso_shared import AUTH_HOST, SESSION_COOKIE, Browser, Provider, Sso
from test_redis_sessions import Keys, RedisServer, eventually, keys, redis, redis_block, through  # noqa: F401

URL = "http://app1.sso.test/"
SUBJECT = "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"  # alice at the test provider
CLIENT_ID = "portcullis-sso"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
SIGNED_OUT = f"http://{AUTH_HOST}/signed-out"  # registered at the provider as post-logout redirect
SIGN_OUT_AT_PROVIDER = f"""  sign_out_at_provider: true
  post_logout_redirect_url: {SIGNED_OUT}
"""


def idp_admin(provider: Provider, path: str, body: bytes = b"") -> dict:
    request = urllib.request.Request(f"{provider.idp.base}{path}", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@contextmanager
def back_channel_to(provider: Provider, door: int):
    """The provider sends portcullis-sso's logout tokens to the HTTP door on `door` meanwhile."""
    uri = urllib.parse.quote(f"http://127.0.0.1:{door}/oauth2/backchannel_logout", safe="")
    idp_admin(provider, f"/admin/backchannel-logout?uri={uri}")
    try:
        yield
    finally:
        idp_admin(provider, "/admin/backchannel-logout?uri=")


def signed(provider: Provider, claims: dict, foreign: bool = False) -> str:
    """`claims` signed by the provider's current key (or, foreign, by a key it does not publish)."""
    path = "/admin/sign" + ("?foreign=1" if foreign else "")
    return idp_admin(provider, path, json.dumps(claims).encode())["token"]


def logout_claims(provider: Provider, **changes) -> dict:
    now = int(time.time())
    claims = {"iss": provider.idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120, "jti": str(uuid.uuid4()),
              "sub": SUBJECT, "events": {LOGOUT_EVENT: {}}}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def post_logout_token(door: int, token: str, content_type: str = "application/x-www-form-urlencoded"):
    """The provider's back-channel call: the status, headers and body of the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", door, timeout=10)
    body = urllib.parse.urlencode({"logout_token": token})
    connection.request("POST", "/oauth2/backchannel_logout", body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    answer = response.status, response.msg, response.read()
    connection.close()
    return answer


def sign_out_at_idp(sso: Sso, browser: Browser, url: str) -> str:
    """The provider's sign-out page at `url`, confirmed as a person would; where it sends the browser."""
    status, _, page = browser.get(url, sso.idp_port)
    assert status == 200, (status, page[:500])
    action = re.search(rb'action="([^"]+)"', page)
    xsrf = re.search(rb'name="xsrf" value="([^"]+)"', page)
    assert action and xsrf, page[:500]
    form = urllib.parse.urlencode({"xsrf": xsrf.group(1).decode(), "logout": "yes"})
    status, headers, page = browser.get(urllib.parse.urljoin(url, action.group(1).decode()), sso.idp_port, method="POST", body=form)
    assert status == 303, (status, page[:500])
    return headers["Location"]


def provider_asks_to_log_in(sso: Sso, browser: Browser) -> bool:
    """A new login through portcullis: True when the provider shows its login form, False when it
    signs the browser in without asking (it still has a session)."""
    status, headers, _ = browser.check(URL)
    assert status == 302, status
    _, page = sso.page_at_idp(browser, sso.to_idp_url(browser, headers["Location"]))
    return page is not None and b'name="login"' in page and b'name="password"' in page


def payload(token: str) -> dict:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@pytest.fixture(scope="module")
def server(launch_portcullis, provider: Provider):
    """Sessions in memory; sign-out goes on to the provider."""
    return launch_portcullis(provider.policies, settings=provider.settings(SIGN_OUT_AT_PROVIDER))


@pytest.fixture(scope="module")
def sso(server, provider: Provider) -> Sso:
    return provider.sso(server.http_port)


@pytest.fixture(scope="module")
def local_only(launch_portcullis, provider: Provider) -> Sso:
    """The default: sign-out ends the session here only."""
    return provider.sso(launch_portcullis(provider.policies, settings=provider.settings()).http_port)


@pytest.fixture(scope="module")
def replicas(launch_portcullis, provider: Provider, redis: RedisServer, keys: Keys) -> list[Sso]:  # noqa: F811
    """Two replicas sharing Redis; local copies last 60 s, so only the announcement ends them sooner."""
    settings = provider.settings(redis_block(redis, [keys.old]))
    return [provider.sso(launch_portcullis(provider.policies, settings=settings).http_port) for _ in range(2)]


def test_signing_out_ends_the_session_at_the_provider_too_so_the_next_login_asks_again(sso, provider):
    browser = sso.browser()
    assert sso.navigate(browser, URL)[0] == 200
    status, headers, _ = browser.get(f"http://{AUTH_HOST}/oauth2/sign_out?rd=%2F", sso.idp_port)
    assert status == 302 and browser.value_of(SESSION_COOKIE) is None
    assert browser.check(URL)[0] == 302, "the session ended here at once"
    location = urllib.parse.urlsplit(headers["Location"])
    assert location._replace(query="").geturl() == f"{provider.idp.issuer}/protocol/openid-connect/logout"
    query = dict(urllib.parse.parse_qsl(location.query))
    assert query["client_id"] == CLIENT_ID
    assert query["post_logout_redirect_uri"] == SIGNED_OUT, "a relative `rd` cannot go to the provider"
    hint = payload(query["id_token_hint"])
    assert (hint["sub"], hint["aud"]) == (SUBJECT, CLIENT_ID), "the login's own ID token"
    assert sign_out_at_idp(sso, browser, headers["Location"]) == SIGNED_OUT
    assert provider_asks_to_log_in(sso, browser), "the provider's session ended too"


def test_by_default_signing_out_leaves_the_providers_session_so_the_next_login_is_silent(local_only):
    browser = local_only.browser()
    assert local_only.navigate(browser, URL)[0] == 200
    status, _, _ = browser.get(f"http://{AUTH_HOST}/oauth2/sign_out", local_only.idp_port)
    assert status == 200 and browser.value_of(SESSION_COOKIE) is None
    assert not provider_asks_to_log_in(local_only, browser)


def test_the_providers_back_channel_logout_ends_the_session(sso, provider):
    with back_channel_to(provider, sso.door):
        browser = sso.browser()
        assert sso.navigate(browser, URL)[0] == 200
        bystander = sso.browser()
        assert sso.navigate(bystander, URL, user="admin")[0] == 200
        # Signed out at the provider itself, not through portcullis: the cookie stays in the browser.
        end_session = f"{provider.idp.issuer}/protocol/openid-connect/logout"
        sign_out_at_idp(sso, browser, end_session)
    assert browser.value_of(SESSION_COOKIE) is not None
    status, headers, _ = browser.check(URL)
    assert status == 302 and "/oauth2/start?rd=" in headers["Location"], "the session the provider named ended"
    assert bystander.check(URL)[0] == 200, "another person's session stays"
    assert "backchannel.error" not in provider.idp.log.read_text()


def test_hand_made_logout_tokens_are_refused_each_for_its_reason(sso, server, provider):
    browser = sso.browser()
    assert sso.navigate(browser, URL)[0] == 200
    far = int(time.time()) + 3600
    cases = {
        "signed by a key the provider does not publish": signed(provider, logout_claims(provider), foreign=True),
        "another audience": signed(provider, logout_claims(provider, aud="someone-else")),
        "another issuer": signed(provider, logout_claims(provider, iss="http://127.0.0.1:1/realms/evil")),
        "a nonce, as an ID token has": signed(provider, logout_claims(provider, nonce="n")),
        "no events": signed(provider, logout_claims(provider, events=None)),
        "another event": signed(provider, logout_claims(provider, events={"urn:example:other": {}})),
        "neither sid nor sub": signed(provider, logout_claims(provider, sub=None)),
        "iat an hour ahead": signed(provider, logout_claims(provider, iat=far, exp=far + 120)),
        "iat an hour ago": signed(provider, logout_claims(provider, iat=far - 7200)),
        "not a token": "not-a-token",
    }
    for case, token in cases.items():
        status, headers, body = post_logout_token(sso.door, token)
        assert (status, json.loads(body)) == (400, {"error": "invalid_request"}), case
        assert headers["Cache-Control"] == "no-store", case
        assert browser.check(URL)[0] == 200, f"{case}: the session stays"
    good = signed(provider, logout_claims(provider))
    assert post_logout_token(sso.door, good, content_type="application/json")[0] == 400, "a form, nothing else"
    status, _, _ = Browser(sso.door).send(sso.door, "GET", f"/oauth2/backchannel_logout?logout_token={good}", "127.0.0.1", {})
    assert status == 400, "a POST, nothing else"
    assert browser.check(URL)[0] == 200
    status, headers, _ = post_logout_token(sso.door, good)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert browser.check(URL)[0] == 302, "every session of the subject ended"
    assert post_logout_token(sso.door, good)[0] == 400, "the same jti again: a replay"
    log = server.log.read_text()
    assert all(token not in log for token in [good, *cases.values()] if len(token) > 20), "no token in a log line"


def test_a_back_channel_logout_at_one_replica_ends_the_session_on_both(replicas, provider):
    one, other = replicas
    with back_channel_to(provider, other.door):
        browser = one.browser()
        assert one.navigate(browser, URL)[0] == 200
        assert through(browser, other).check(URL)[0] == 200, "the other replica keeps a local copy now"
        sign_out_at_idp(one, browser, f"{provider.idp.issuer}/protocol/openid-connect/logout")
    assert through(browser, other).check(URL)[0] == 302, "the replica the provider told"
    eventually(lambda: browser.check(URL)[0] == 302, "the first replica refuses it before its copy's 60 s")


def test_a_logout_token_by_subject_ends_every_session_of_that_person_on_both_replicas_once(replicas, provider):
    one, other = replicas
    phone, laptop = one.browser(), other.browser()
    assert one.navigate(phone, URL)[0] == 200
    assert other.navigate(laptop, URL)[0] == 200
    assert through(phone, other).check(URL)[0] == 200 and through(laptop, one).check(URL)[0] == 200
    token = signed(provider, logout_claims(provider))
    assert post_logout_token(one.door, token)[0] == 200
    for browser in (phone, laptop):
        for replica in replicas:
            eventually(lambda: through(browser, replica).check(URL)[0] == 302, "every session of alice ended")
    assert post_logout_token(other.door, token)[0] == 400, "a replay at the other replica is seen too"
