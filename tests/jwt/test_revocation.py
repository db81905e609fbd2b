"""Revocation shared by two replicas through a real Redis (tests/redis_server.py): a revocation made on
one replica's admin endpoint refuses the token on the other; a back-channel logout token signed by
the real provider (tests/oidc/idp.mjs) ends a bearer token's `sid` on both; Redis restarted while the
list stays in force, then an addition made meanwhile reaches the other replica; Redis never up.

`POST /api/jobs` is open to any verified caller of the IdP (the shipped job-board policies).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from harness import eventually, free_port
from jwt_checks import assert_allowed, assert_invalid_token, ask
from jwt_policies import idp_rule, request_authentication
from redis_server import RedisServer

REVOKED = "Token has been revoked"
ADMIN_TOKEN = "adm-4b1f9c2e7d3a5068"
CLIENT_ID = "jobs-api"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
BACK_CHANNEL = "/revocations/backchannel_logout"


@pytest.fixture(scope="module")
def admin_token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("revocation") / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(free_port(), tmp_path_factory.mktemp("revocation-redis")).start()
    yield server
    server.stop()


def revocation_settings(redis_port: int, admin_token_file, issuer: str) -> str:
    block = {
        "admin_token_file": str(admin_token_file),
        "logout_token_issuers": [{"issuer": issuer, "client_id": CLIENT_ID}],
        "redis": {"url": f"redis://127.0.0.1:{redis_port}", "timeout_ms": 300},
    }
    return json.dumps({"revocation": block})


@pytest.fixture(scope="module")
def replicas(launch_jwt_server, idp, redis, admin_token_file):
    """Two replicas sharing the module's Redis."""
    document = request_authentication([idp_rule(idp.issuer)], name="keycloak")
    settings = revocation_settings(redis.port, admin_token_file, idp.issuer)
    return [launch_jwt_server(f"revocation-{name}", idp, document, settings=settings) for name in ("a", "b")]


def admin_call(replica, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(replica.server.admin_url(path), data=data, method=method)
    request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def revoke(replica, **names) -> dict:
    status, answer = admin_call(replica, "POST", "/revocations", names)
    assert status == 200, answer
    return answer


def post_logout_token(replica, token: str) -> tuple[int, bytes]:
    body = urllib.parse.urlencode({"logout_token": token}).encode()
    request = urllib.request.Request(replica.server.admin_url(BACK_CHANNEL), data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def signed_by_idp(idp, claims: dict) -> str:
    """`claims` signed with the provider's current key (its test control)."""
    request = urllib.request.Request(f"{idp.base}/admin/sign", data=json.dumps(claims).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["token"]


def is_refused(replica, token: str) -> bool:
    outcome = ask(replica.authz, "POST", "/api/jobs", token=token)
    if outcome.allowed:
        return False
    assert_invalid_token(outcome, REVOKED, None)
    return True


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


def metric(replica, series: str) -> float | None:
    status, body = replica.server.admin_get("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_a_revocation_on_one_replica_refuses_the_token_on_the_other(replicas, idp, redis):
    first, second = replicas
    token = idp.token("alice")
    for replica in replicas:
        assert_allowed(ask(replica.authz, "POST", "/api/jobs", token=token))
        assert_allowed(ask(replica.authz, "POST", "/api/jobs", token=token))  # remembered by the token cache
    answer = revoke(first, issuer=idp.issuer, jti=jti_of(token))
    assert answer["shared"] is True, answer
    assert is_refused(first, token), "at once on the replica that took it"
    eventually(lambda: is_refused(second, token), "the other replica refuses the token")
    other = idp.token("alice")
    assert_allowed(ask(second.authz, "POST", "/api/jobs", token=other))
    members = redis.command("ZRANGE", "portcullis:revocation:entries", "0", "-1")
    assert b"jti:" in b"".join(members), members
    assert jti_of(token).encode() not in b"".join(members), "Redis holds digests, never a token's names"


def test_a_back_channel_logout_from_the_provider_ends_a_bearer_tokens_session_on_both_replicas(replicas, idp):
    first, second = replicas
    now, sid = int(time.time()), str(uuid.uuid4())
    access = {"iss": idp.issuer, "sub": "c0ffee00-1111-4222-8333-444455556666", "aud": CLIENT_ID, "sid": sid,
              "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    in_session = signed_by_idp(idp, access)
    other_session = signed_by_idp(idp, {**access, "sid": str(uuid.uuid4()), "jti": str(uuid.uuid4())})
    for replica in replicas:
        assert_allowed(ask(replica.authz, "POST", "/api/jobs", token=in_session))
    logout = signed_by_idp(idp, {"iss": idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120,
                                 "jti": str(uuid.uuid4()), "sid": sid, "events": {LOGOUT_EVENT: {}}})
    assert post_logout_token(first, logout) == (200, b"{}")
    assert is_refused(first, in_session)
    eventually(lambda: is_refused(second, in_session), "the other replica refuses the session's token")
    for replica in replicas:
        assert_allowed(ask(replica.authz, "POST", "/api/jobs", token=other_session))
    status, body = post_logout_token(second, logout)
    assert (status, json.loads(body)) == (400, {"error": "invalid_request"}), "a replay, on any replica"
    assert metric(first, 'portcullis_revocation_additions_total{source="back_channel"}') == 1.0


def test_the_list_stays_in_force_while_redis_is_down_and_an_addition_made_meanwhile_reaches_the_other(replicas, idp, redis):
    first, second = replicas
    before, meanwhile = idp.token("alice"), idp.token("alice")
    revoke(first, issuer=idp.issuer, jti=jti_of(before))
    eventually(lambda: is_refused(second, before), "shared before the outage")
    redis.stop()
    try:
        eventually(lambda: (metric(second, "portcullis_revocation_list_age_seconds") or 0) > 0, "the age grows")
        for replica in replicas:
            assert is_refused(replica, before), "the last known list stays in force"
        answer = revoke(first, issuer=idp.issuer, jti=jti_of(meanwhile))
        assert answer["shared"] is False, answer
        assert is_refused(first, meanwhile), "in force at once where it was made"
        assert_allowed(ask(second.authz, "POST", "/api/jobs", token=meanwhile))
    finally:
        redis.start()
    eventually(lambda: is_refused(second, meanwhile), "the addition made during the outage reaches the other replica")
    eventually(lambda: metric(second, "portcullis_revocation_list_age_seconds") == 0.0, "in sync again")
    for replica in replicas:
        assert is_refused(replica, before), "an entry Redis lost in its restart stays in force"


def test_without_redis_a_replica_starts_keeps_revocations_to_itself_and_its_list_ages(launch_jwt_server, idp, admin_token_file):
    document = request_authentication([idp_rule(idp.issuer)], name="keycloak")
    closed_port = free_port()
    replica = launch_jwt_server("revocation-alone", idp, document,
                                settings=revocation_settings(closed_port, admin_token_file, idp.issuer))
    token = idp.token("alice")
    assert_allowed(ask(replica.authz, "POST", "/api/jobs", token=token))
    answer = revoke(replica, issuer=idp.issuer, jti=jti_of(token))
    assert answer["shared"] is False, answer
    assert is_refused(replica, token)
    first_age = metric(replica, "portcullis_revocation_list_age_seconds")
    assert first_age is not None and first_age > 0, first_age
    eventually(lambda: metric(replica, "portcullis_revocation_list_age_seconds") > first_age + 1, "the age grows")
    assert (metric(replica, "portcullis_revocation_sync_errors_total") or 0) >= 1
