"""A session's access token refreshed at the real OIDC provider of tests/oidc, which issues
short-lived access tokens and rotating refresh tokens to portcullis here; the identity headers
under configured names, the access token passed on; one refresh across replicas sharing a real
Redis (Debian's redis-server on a free loopback port).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import threading
import time
import urllib.request

from pathlib import Path

import pytest
from sso_shared import CALLBACK, POLICY, SESSION_COOKIE, Browser, Provider, start_idp
from harness import eventually, free_port, portcullis_binary
from redis_server import RedisServer

URL = "http://app1.sso.test/"
# The provider's access tokens for portcullis live this long; refreshed from half of it on.
ACCESS_TOKEN_TTL_S = 4
ACCESS_TOKEN = "X-Auth-Request-Access-Token"
KEY_PREFIX = "portcullis:session:"
SESSION_KEY = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
# Hang guards of the waits below, not expectations of speed.
EVENTUALLY_S = 30.0


def wait_out_the_access_token() -> None:
    """Lets the access token of a login made just before expire: its lifetime, and a second more."""
    time.sleep(ACCESS_TOKEN_TTL_S + 1)


def refreshing_provider(work: Path) -> Provider:
    """A provider of its own: access tokens of ACCESS_TOKEN_TTL_S, a rotating refresh token at each refresh."""
    idp = start_idp(work / "idp.log", sso_redirect_uri=CALLBACK, sso_refresh_ttl=ACCESS_TOKEN_TTL_S)
    (work / "policies").mkdir()
    (work / "policies" / "people.yaml").write_text(POLICY.format(issuer=idp.issuer))
    secret = work / "client-secret"
    secret.write_text("sso-secret\n")
    return Provider(idp, work / "policies", secret)


@pytest.fixture(scope="module")
def refreshing(tmp_path_factory) -> Provider:
    provider = refreshing_provider(tmp_path_factory.mktemp("sso-refresh"))
    yield provider
    assert provider.idp.stop() == 0


def idp_admin(provider: Provider, method: str, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{provider.idp.port}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def metric(server, name: str, label: str) -> int:
    _, body = server.admin_get("/metrics")
    found = re.search(rf"^portcullis_{name}_total\{{{label}\}} (\d+)".encode(), body, re.MULTILINE)
    assert found, body[-3000:]
    return int(found.group(1))


def passing_on(provider: Provider, extra: str = "") -> str:
    return provider.settings(f"  pass_access_token: true\n{extra}")


def test_a_session_outlives_its_access_token_and_the_app_gets_each_new_one(launch_portcullis, refreshing):
    server = launch_portcullis(refreshing.policies, settings=passing_on(refreshing))
    sso = refreshing.sso(server.http_port)
    browser = sso.browser()
    status, headers, _ = sso.navigate(browser, URL)
    assert status == 200
    seen = [headers[ACCESS_TOKEN]]

    def a_new_token() -> bool:
        status, headers, _ = browser.check(URL)
        assert status == 200, "the session keeps working while its token is refreshed"
        if headers[ACCESS_TOKEN] != seen[-1]:
            seen.append(headers[ACCESS_TOKEN])
        return len(seen) >= 3

    # Twice refreshed in the background: the second time with the refresh token the first one rotated.
    eventually(a_new_token, "two refreshes while in use")
    assert metric(server, "session_refreshes", 'result="ok"') >= 2
    # Not used for longer than the token lives: the next check waits for the refresh.
    wait_out_the_access_token()
    status, headers, _ = browser.check(URL)
    assert status == 200 and headers[ACCESS_TOKEN] not in seen, "a new token, not the expired one"
    assert idp_admin(refreshing, "GET", "/admin/refreshes")["refused"] == 0


def test_two_replicas_hitting_an_expired_session_at_once_refresh_it_once(launch_portcullis, refreshing, tmp_path):
    redis = RedisServer(free_port(), tmp_path).start()
    try:
        key = tmp_path / "session-key"
        key.write_text(SESSION_KEY + "\n")
        redis_block = f"""  redis:
    url: redis://127.0.0.1:{redis.port}/0
    encryption_keys: [{{file: {key}}}]
    local_copy_secs: 1
"""
        settings = passing_on(refreshing, redis_block)
        servers = [launch_portcullis(refreshing.policies, settings=settings) for _ in range(2)]
        one, other = (refreshing.sso(server.http_port) for server in servers)
        browser = one.browser()
        status, headers, _ = one.navigate(browser, URL)
        assert status == 200
        first_token = headers[ACCESS_TOKEN]
        assert Browser(other.door, browser.cookies).check(URL)[0] == 200
        session_id = base64.urlsafe_b64decode(browser.value_of(SESSION_COOKIE) + "=")
        sealed = redis.command("GET", KEY_PREFIX + hashlib.sha256(session_id).hexdigest())
        assert sealed and first_token.encode() not in sealed, "the access token is sealed with the session"
        wait_out_the_access_token()
        grants_before = idp_admin(refreshing, "GET", "/admin/refreshes")["grants"]
        # The provider answers late: both replicas' refreshes would overlap there.
        idp_admin(refreshing, "POST", "/admin/token-delay?ms=1000")
        answers: list[tuple[int, str | None]] = []
        start = threading.Barrier(6)

        def check(replica) -> None:
            start.wait()
            status, headers, _ = Browser(replica.door, browser.cookies).check(URL)
            answers.append((status, headers.get(ACCESS_TOKEN)))

        threads = [threading.Thread(target=check, args=(replica,)) for replica in (one, other) * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(EVENTUALLY_S)
        idp_admin(refreshing, "POST", "/admin/token-delay?ms=0")
        assert len(answers) == 6 and all(status == 200 for status, _ in answers), answers
        tokens = {token for _, token in answers}
        assert len(tokens) == 1 and first_token not in tokens, "every check carries the one new token"
        refreshes = idp_admin(refreshing, "GET", "/admin/refreshes")
        assert refreshes["grants"] - grants_before == 1, "exactly one refresh-token grant reached the provider"
        assert refreshes["refused"] == 0
        assert sum(metric(server, "session_refreshes", 'result="ok"') for server in servers) == 1
        for replica in (one, other):
            assert Browser(replica.door, browser.cookies).check(URL)[0] == 200, "the session keeps working on both"
    finally:
        idp_admin(refreshing, "POST", "/admin/token-delay?ms=0")
        redis.stop()


def test_a_session_in_use_on_two_replicas_outlives_its_idle_timeout_and_every_access_token(
    launch_portcullis, refreshing, tmp_path
):
    """Each replica rewrites the last use while the other writes refreshed tokens: neither undoes the other."""
    redis = RedisServer(free_port(), tmp_path).start()
    try:
        key = tmp_path / "session-key"
        key.write_text(SESSION_KEY + "\n")
        block = f"""  session_idle_timeout_secs: 3
  redis:
    url: redis://127.0.0.1:{redis.port}/0
    encryption_keys: [{{file: {key}}}]
    local_copy_secs: 1
"""
        settings = passing_on(refreshing, block)
        one, other = (refreshing.sso(launch_portcullis(refreshing.policies, settings=settings).http_port) for _ in range(2))
        browser = one.browser()
        assert one.navigate(browser, URL)[0] == 200
        refused_before = idp_admin(refreshing, "GET", "/admin/refreshes")["refused"]
        tokens = set()
        deadline = time.monotonic() + 3 * ACCESS_TOKEN_TTL_S
        while time.monotonic() < deadline:
            for replica in (one, other):
                status, headers, _ = Browser(replica.door, browser.cookies).check(URL)
                assert status == 200, "in use: neither idle nor logged out by a refresh"
                tokens.add(headers.get(ACCESS_TOKEN))
            time.sleep(0.3)
        assert len(tokens - {None}) >= 3, "refreshed while in use"
        assert idp_admin(refreshing, "GET", "/admin/refreshes")["refused"] == refused_before
    finally:
        redis.stop()


def test_a_session_whose_refresh_the_provider_refuses_ends_and_the_next_navigation_logs_in(launch_portcullis, refreshing):
    server = launch_portcullis(refreshing.policies, settings=passing_on(refreshing))
    sso = refreshing.sso(server.http_port)
    browser = sso.browser()
    assert sso.navigate(browser, URL)[0] == 200
    assert idp_admin(refreshing, "POST", "/admin/revoke-sso-grants")["revoked"] >= 1
    wait_out_the_access_token()
    status, headers, _ = browser.check(URL)
    assert status == 302 and "/oauth2/start?rd=" in headers["Location"], "sent to log in again"
    assert metric(server, "session_refreshes", 'result="invalid_grant"') == 1
    assert metric(server, "sessions_ended", 'reason="refresh_failed"') == 1
    assert browser.check(URL)[0] == 302, "the session stays ended"


def test_the_access_token_goes_in_the_configured_header_and_client_copies_are_stripped(launch_portcullis, refreshing):
    headers_block = """  headers:
    user: X-Remote-User
    access_token: X-Upstream-Token
"""
    server = launch_portcullis(refreshing.policies, settings=passing_on(refreshing, headers_block))
    sso = refreshing.sso(server.http_port)
    browser = sso.browser()
    assert sso.navigate(browser, URL)[0] == 200
    forged = {"X-Upstream-Token": "forged", "X-Remote-User": "admin"}
    status, headers, _ = browser.check(URL, extra=forged)
    assert status == 200
    assert headers["X-Upstream-Token"] not in ("", "forged") and headers["X-Remote-User"] != "admin"
    assert ACCESS_TOKEN not in headers and "X-Auth-Request-User" not in headers, "the configured names replace them"
    anonymous = sso.browser().check("http://app1.sso.test/public", extra=forged)
    removed = anonymous[1]["X-Envoy-Auth-Headers-To-Remove"].split(",")
    assert {"x-upstream-token", "x-remote-user"} <= set(removed), "client copies never reach the app"


def test_the_access_token_is_not_passed_on_unless_asked_for(launch_portcullis, refreshing):
    server = launch_portcullis(refreshing.policies, settings=refreshing.settings())
    sso = refreshing.sso(server.http_port)
    browser = sso.browser()
    status, headers, _ = sso.navigate(browser, URL)
    assert status == 200 and ACCESS_TOKEN not in headers
    removed = browser.check(URL, extra={ACCESS_TOKEN: "forged"})[1]["X-Envoy-Auth-Headers-To-Remove"].split(",")
    assert ACCESS_TOKEN.lower() in removed


def test_while_the_provider_is_down_a_session_keeps_its_identity_but_not_its_expired_access_token(
    launch_portcullis, tmp_path
):
    provider = refreshing_provider(tmp_path)
    server = launch_portcullis(provider.policies, settings=passing_on(provider))
    sso = provider.sso(server.http_port)
    browser = sso.browser()
    assert sso.navigate(browser, URL)[0] == 200
    assert provider.idp.stop() == 0
    wait_out_the_access_token()
    status, headers, _ = browser.check(URL, extra={ACCESS_TOKEN: "forged"})
    assert status == 200 and headers["X-Auth-Request-Preferred-Username"] == "alice", "still the person"
    assert ACCESS_TOKEN not in headers, "the expired token is not passed on"
    assert ACCESS_TOKEN.lower() in headers["X-Envoy-Auth-Headers-To-Remove"].split(","), "nor the client's copy"
    assert metric(server, "session_refreshes", 'result="error"') >= 1
    assert browser.check(URL)[0] == 200, "retried later, not at every check: the session goes on"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("  headers:\n    user: X Remote User\n", "sso.headers.user: `X Remote User` is not a header name"),
        ("  headers:\n    access_token: Cookie\n", "sso.headers.access_token: `Cookie` is reserved"),
        ("  headers:\n    email: X-Auth-Request-User\n", "sso.headers.email: `X-Auth-Request-User` is already the name"),
        ("  headers:\n    colour: X-Colour\n", "unknown field `colour`"),
    ],
)
def test_a_bad_identity_header_name_stops_the_start_naming_the_file_and_key(refreshing, tmp_path, block, message):
    settings = tmp_path / "portcullis.yaml"
    settings.write_text(refreshing.settings(block))
    done = subprocess.run(
        [portcullis_binary(), "serve", "--config", str(settings), "--policies", str(refreshing.policies)],
        capture_output=True,
        timeout=EVENTUALLY_S,
    )
    stderr = done.stderr.decode()
    assert done.returncode != 0 and message in stderr, stderr
    assert str(settings) in stderr, stderr
