"""The shipped dashboard example (policies/dashboard.yaml) against a real CouchDB-protocol server.

Users see only the apps of their account, admins every app; the users and apps come from two
CouchDB databases that portcullis follows through their `_changes` feeds. A user who loses access
while requests stream is refused from the moment the change reaches portcullis and on; a feed
dropped keeps deciding on the last good data and resumes where it stopped.
"""

from __future__ import annotations

import base64
import json
import threading

import pytest
import yaml
from couch_server import CouchServer
from harness import REPO_ROOT, eventually
from jwt_checks import assert_allowed, assert_rbac_denied, ask, metric_value, metrics_text
from jwt_policies import inline_rule, request_authentication
from jwt_tokens import TEST_ISSUER, SigningKey, claims

DASHBOARD = {"namespace": "dashboard", "app": "dashboard"}
SHIPPED_COUCH = "http://127.0.0.1:5984"
USER_HEADER = "x-portcullis-user"


@pytest.fixture(scope="module")
def couch():
    """The example's databases, seeded from policies/dashboard-data.json as `make run` seeds them."""
    server = CouchServer().start()
    seed = json.loads((REPO_ROOT / "policies" / "dashboard-data.json").read_text())
    for database, documents in seed.items():
        server.create(database)
        for document in documents:
            server.put(database, document)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dashboard(launch_jwt_server, couch, test_key):
    """The shipped dashboard.yaml, its CouchDB URLs pointed at the test server, TEST_ISSUER's tokens mesh-wide."""
    shipped = (REPO_ROOT / "policies" / "dashboard.yaml").read_text()
    assert SHIPPED_COUCH in shipped
    documents = list(yaml.safe_load_all(shipped.replace(SHIPPED_COUCH, couch.url)))
    mesh_wide = request_authentication([inline_rule(TEST_ISSUER, test_key)], name="tokens", namespace="istio-system")
    return launch_jwt_server("dashboard", None, mesh_wide, *documents)


def token_of(key: SigningKey, user: str) -> str:
    return key.token(claims(sub=user, lifetime=3600))


def opens(dashboard, key: SigningKey, user: str, path: str, **headers):
    return ask(dashboard.authz, "GET", path, token=token_of(key, user), workload=DASHBOARD, headers=headers)


# user, path -> allowed. alice and bob are members of acme and globex, carol is acme's admin (any
# app); mallory has no record; `nothing` is no app.
EXPECTED = {
    ("alice", "/apps"): True,
    ("alice", "/apps/acme-shop"): True,
    ("alice", "/apps/acme-blog/report/2026/q4"): True,
    ("alice", "/apps/globex-crm"): False,
    ("alice", "/apps/globex-crm/report/q4"): False,
    ("bob", "/apps/globex-crm"): True,
    ("bob", "/apps/acme-shop"): False,
    ("carol", "/apps/globex-crm"): True,
    ("carol", "/apps/globex-crm/report/q4"): True,
    ("carol", "/apps/nothing"): False,
    ("alice", "/apps/nothing"): False,
    ("mallory", "/apps"): False,
    ("mallory", "/apps/acme-shop"): False,
    ("alice", "/apps/acme-shop/settings"): False,
}


def test_each_user_opens_only_the_apps_of_their_account_and_an_admin_any_app_that_exists(dashboard, test_key):
    wrong = [
        f"{user} {path}: expected {'allow' if allowed else 'deny'}, got {outcome.describe()}"
        for (user, path), allowed in EXPECTED.items()
        if (outcome := opens(dashboard, test_key, user, path)).allowed != allowed
    ]
    assert not wrong, "\n".join(wrong)
    assert_rbac_denied(opens(dashboard, test_key, "alice", "/apps/globex-crm"))
    anonymous = ask(dashboard.authz, "GET", "/apps/acme-shop", workload=DASHBOARD)
    assert_rbac_denied(anonymous)


def test_the_service_receives_the_callers_record_in_one_header_and_never_a_clients_copy(dashboard, test_key):
    forged = base64.urlsafe_b64encode(b'{"role":"admin"}').decode().rstrip("=")
    outcome = opens(dashboard, test_key, "alice", "/apps/acme-shop", **{USER_HEADER: forged})
    assert_allowed(outcome)
    value = outcome.headers[USER_HEADER]
    assert outcome.overwrites[USER_HEADER], outcome.describe()
    record = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    assert record == {"name": "Alice", "account": "acme", "role": "member"}
    # A caller without a record gets no header, and the client's copy does not pass either.
    mallory = opens(dashboard, test_key, "mallory", "/apps", **{USER_HEADER: forged})
    assert not mallory.allowed
    bob = ask(dashboard.authz, "GET", "/apps", token=token_of(test_key, "bob"), workload=DASHBOARD, headers={USER_HEADER: forged})
    assert_allowed(bob)
    assert json.loads(base64.urlsafe_b64decode(bob.headers[USER_HEADER] + "==="))["account"] == "globex"


def test_a_user_who_loses_access_while_requests_stream_is_refused_from_the_next_check_on(dashboard, couch, test_key):
    token = token_of(test_key, "alice")
    outcomes: list[bool] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            outcome = ask(dashboard.authz, "GET", "/apps/acme-blog", token=token, workload=DASHBOARD)
            outcomes.append(outcome.allowed)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        eventually(lambda: len(outcomes) >= 20, "checks stream and are allowed")
        # The blog is handed over to globex: alice's account no longer owns it.
        couch.put("apps", {"_id": "acme-blog", "name": "Acme blog", "account": "globex"})
        eventually(lambda: outcomes and not outcomes[-1], "the change reaches the checks")
        refused_at = len(outcomes)
        eventually(lambda: len(outcomes) >= refused_at + 50, "more checks after the first refusal")
    finally:
        stop.set()
        streamer.join(timeout=30)
    first_refusal = outcomes.index(False)
    assert all(outcomes[:first_refusal]), "allowed until the change"
    assert not any(outcomes[first_refusal:]), "refused from the first refusal on, never allowed again"
    assert first_refusal >= 20
    # And bob, whose account now owns it, opens it.
    assert_allowed(opens(dashboard, test_key, "bob", "/apps/acme-blog"))
    couch.put("apps", {"_id": "acme-blog", "name": "Acme blog", "account": "acme"})
    eventually(lambda: opens(dashboard, test_key, "alice", "/apps/acme-blog").allowed, "the blog is back")


def test_a_dropped_feed_keeps_the_last_good_data_and_resumes_from_its_last_seq(dashboard, couch, test_key):
    last_seq = str(couch.update_seq("users"))
    followed = len(couch.changes_requests("users"))
    couch.drop_connections()
    # Deciding goes on with the data already loaded while the feed reconnects.
    assert_allowed(opens(dashboard, test_key, "alice", "/apps/acme-shop"))
    resumed = lambda: [query for query in couch.changes_requests("users")[followed:] if query.get("feed") == "continuous"]  # noqa: E731
    eventually(resumed, "the users feed opened again")
    assert resumed()[0]["since"] == last_seq, resumed()
    # A change after the drop reaches the checks: bob joins acme.
    couch.put("users", {"_id": "bob", "name": "Bob", "account": "acme", "role": "member"})
    eventually(lambda: opens(dashboard, test_key, "bob", "/apps/acme-shop").allowed, "bob's move reaches the checks")
    assert_rbac_denied(opens(dashboard, test_key, "bob", "/apps/globex-crm"))
    assert [query["since"] for query in couch.changes_requests("users")].count("0") == 1, "never read again from 0"
    text = metrics_text(dashboard.server)
    assert metric_value(text, "portcullis_data_records", source="users") == 3
    assert metric_value(text, "portcullis_data_records", source="apps") == 3
    couch.put("users", {"_id": "bob", "name": "Bob", "account": "globex", "role": "member"})
    eventually(lambda: not opens(dashboard, test_key, "bob", "/apps/acme-shop").allowed, "bob is back at globex")
