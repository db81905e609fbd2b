"""Sessions shared by replicas through a real Redis (Debian's redis-server, started here on a free
loopback port without persistence): portcullis replicas in Traefik's forward-auth mode, the real
OIDC provider of tests/oidc, and the cookie-keeping client of tests/sso/conftest.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sso_shared import AUTH_HOST, SESSION_COOKIE, Browser, Cookie, Provider, Sso
from harness import eventually, free_port, stop_process
from redis_server import RedisServer

URL = "http://app1.sso.test/"
SUBJECT = "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"  # alice at the test provider
KEY_PREFIX = "portcullis:session:"
OLD_KEY = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
NEW_KEY = base64.b64encode(bytes(range(100, 132))).decode()


@dataclass
class Keys:
    old: Path
    new: Path


def redis_block(redis: RedisServer, keys: list[Path], local_copy_secs: int = 60, outage_grace_secs: int = 300) -> str:
    entries = ", ".join(f"{{file: {key}}}" for key in keys)
    return f"""  redis:
    url: redis://127.0.0.1:{redis.port}/0
    encryption_keys: [{entries}]
    local_copy_secs: {local_copy_secs}
    outage_grace_secs: {outage_grace_secs}
"""


def through(browser: Browser, replica: Sso) -> Browser:
    """The same browser (the same cookies), its requests reaching `replica`."""
    return Browser(replica.door, browser.cookies)


def store_errors(server) -> int:
    _, body = server.admin_get("/metrics")
    found = re.search(rb"^portcullis_session_store_errors_total (\d+)", body, re.MULTILINE)
    assert found, body[-2000:]
    return int(found.group(1))


def login_answer(replica: Sso) -> tuple[int, bytes]:
    """A new browser's login through `replica`: the status and text of `start` when it refuses,
    else of the callback (302 when a session opened)."""
    browser = replica.browser()
    status, headers, _ = browser.check(URL)
    assert status == 302, status
    status, headers, body = browser.get(headers["Location"], replica.idp_port)
    if status != 302:
        return status, body
    callback = replica.log_in_at_idp(browser, headers["Location"])
    status, _, body = browser.get(callback, replica.idp_port)
    return status, body


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    work = tmp_path_factory.mktemp("session-keys")
    (work / "old").write_text(OLD_KEY + "\n")
    (work / "new").write_text(NEW_KEY + "\n")
    return Keys(work / "old", work / "new")


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> RedisServer:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(launch_portcullis, provider: Provider, redis: RedisServer, keys: Keys) -> list[Sso]:
    """Two replicas sharing Redis; local copies last 60 s, so only the announcement ends them sooner."""
    settings = provider.settings(redis_block(redis, [keys.old]))
    return [provider.sso(launch_portcullis(provider.policies, settings=settings).http_port) for _ in range(2)]


def test_a_person_who_logged_in_through_one_replica_is_let_in_by_the_other(replicas):
    one, other = replicas
    browser = one.browser()
    assert one.navigate(browser, URL)[0] == 200
    status, headers, _ = through(browser, other).check("http://app2.sso.test/")
    assert status == 200, "no second login"
    assert headers["X-Auth-Request-Preferred-Username"] == "alice"
    status, _, body = through(browser, other).get(f"http://{AUTH_HOST}/oauth2/userinfo", other.idp_port)
    assert status == 200 and b'"email":"alice@example.com"' in body, body


def test_a_login_started_on_one_replica_finishes_on_the_other_once(replicas):
    one, other = replicas
    browser = one.browser()
    callback = one.log_in_at_idp(browser, one.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=%2Fx"))
    saved = list(browser.cookies)
    status, headers, _ = through(browser, other).get(callback, other.idp_port)
    assert status == 302 and headers["Location"] == "/x"
    assert through(browser, one).check(URL)[0] == 200
    replayer = Browser(one.door, saved)
    assert replayer.get(callback, one.idp_port)[0] == 400, "one callback per login, whichever replica"


def test_signing_out_on_one_replica_is_refused_by_every_replica_at_once(replicas):
    one, other = replicas
    browser = one.browser()
    assert one.navigate(browser, URL)[0] == 200
    session = browser.value_of(SESSION_COOKIE)
    assert through(browser, other).check(URL)[0] == 200, "the other replica keeps a local copy now"
    status, _, _ = browser.get(f"http://{AUTH_HOST}/oauth2/sign_out", one.idp_port)
    assert status == 200 and browser.value_of(SESSION_COOKIE) is None
    # The old cookie, kept by a thief: refused by both, the other replica well before its copy's 60 s.
    thief = Browser(other.door, [Cookie(SESSION_COOKIE, session, "sso.test", False, "/")])
    eventually(lambda: thief.check(URL)[0] == 302, "the other replica refuses the ended session")
    assert Browser(one.door, thief.cookies).check(URL)[0] == 302


def test_a_restarted_replica_still_knows_its_sessions(launch_portcullis, provider, redis, keys):
    settings = provider.settings(redis_block(redis, [keys.old]))
    first = launch_portcullis(provider.policies, settings=settings)
    replica = provider.sso(first.http_port)
    browser = replica.browser()
    assert replica.navigate(browser, URL)[0] == 200
    assert stop_process(first.process) == 0
    restarted = launch_portcullis(provider.policies, settings=settings)
    status, headers, _ = Browser(restarted.http_port, browser.cookies).check(URL)
    assert status == 200 and headers["X-Auth-Request-User"] == SUBJECT


def test_redis_holds_a_session_sealed_under_the_hash_of_its_id(replicas, redis):
    one, _ = replicas
    browser = one.browser()
    assert one.navigate(browser, URL)[0] == 200
    session = browser.value_of(SESSION_COOKIE)
    session_id = base64.urlsafe_b64decode(session + "=")
    key = KEY_PREFIX + hashlib.sha256(session_id).hexdigest()
    raw = redis.command("GET", key)
    assert raw, f"no value under {key}"
    for secret in [session.encode(), session_id, b"alice", SUBJECT.encode(), b"example.com"]:
        assert secret not in raw, secret
    assert all(session.encode() not in name for name in redis.command("KEYS", "*"))
    assert 0 < redis.command("TTL", key) <= 8 * 3600, "the idle timeout bounds it in Redis too"


def test_a_session_value_copied_under_another_session_key_lets_nobody_in(replicas, redis):
    one, other = replicas
    admin, alice = one.browser(), one.browser()
    assert one.navigate(admin, URL, user="admin")[0] == 200
    assert one.navigate(alice, URL)[0] == 200

    def key_of(browser: Browser) -> str:
        session_id = base64.urlsafe_b64decode(browser.value_of(SESSION_COOKIE) + "=")
        return KEY_PREFIX + hashlib.sha256(session_id).hexdigest()

    assert redis.command("SET", key_of(alice), redis.command("GET", key_of(admin))) == "OK"
    # The other replica has no copy of alice's session: it reads the replayed value, which does not open.
    assert through(alice, other).check("http://app1.sso.test/admin")[0] == 302
    assert through(admin, other).check("http://app1.sso.test/admin")[0] == 200


def test_a_replica_with_a_new_key_first_reads_the_sessions_sealed_with_the_old_one(launch_portcullis, provider, redis, keys, replicas):
    old_only, _ = replicas
    settings = provider.settings(redis_block(redis, [keys.new, keys.old]))
    rotated = provider.sso(launch_portcullis(provider.policies, settings=settings).http_port)
    before = old_only.browser()
    assert old_only.navigate(before, URL)[0] == 200
    assert through(before, rotated).check(URL)[0] == 200, "sealed with the old key, read with [new, old]"
    after = rotated.browser()
    assert rotated.navigate(after, URL)[0] == 200
    assert through(after, old_only).check(URL)[0] == 302, "the new key seals: a replica without it reads nothing"


def test_while_redis_is_down_local_copies_work_for_a_bounded_time_and_new_logins_get_a_clear_503(
    launch_portcullis, provider, keys, tmp_path
):
    redis = RedisServer(free_port(), tmp_path).start()
    try:
        lenient = launch_portcullis(provider.policies, settings=provider.settings(redis_block(redis, [keys.old], 1, 300)))
        strict = launch_portcullis(provider.policies, settings=provider.settings(redis_block(redis, [keys.old], 1, 2)))
        one, two = provider.sso(lenient.http_port), provider.sso(strict.http_port)
        browser = one.browser()
        assert one.navigate(browser, URL)[0] == 200
        assert through(browser, two).check(URL)[0] == 200, "a local copy on the strict replica too"

        redis.stop()
        eventually(lambda: b"session store unavailable" in lenient.admin_get("/readyz")[1], "/readyz names the store")
        assert lenient.admin_get("/readyz")[0] == 200, "named, not failed: tokens and local copies still work"
        # The copy is soon older than its 1 s: checks ask Redis, fail, and the copy still lets alice in.
        errors_before = store_errors(lenient)

        def let_in_while_reads_fail() -> bool:
            assert browser.check(URL)[0] == 200
            return b"session store unavailable: read:" in lenient.admin_get("/readyz")[1]

        eventually(let_in_while_reads_fail, "a check whose Redis read failed")
        assert store_errors(lenient) > errors_before, "counted"
        # On the strict replica the copy lasts 2 s after its last read, then nobody is let in on it.
        eventually(lambda: through(browser, two).check(URL)[0] == 302, "the strict replica's copy ends")

        status, body = login_answer(one)
        assert status == 503 and body.startswith(b"sign-in is unavailable"), (status, body)

        redis.start()
        eventually(lambda: login_answer(one)[0] == 302, "a login once Redis is back")
        eventually(lambda: b"session store" not in lenient.admin_get("/readyz")[1], "/readyz clears")
    finally:
        redis.stop()
