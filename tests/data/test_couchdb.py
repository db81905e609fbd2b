"""A data source fed by a real CouchDB-protocol server (express-pouchdb): the first load, changes and
deletions seen promptly, a dropped feed resumed from its last seq, the limits, and no secret in the log."""

from __future__ import annotations

from data_source import SECRET
from couch_server import wait_until

USERS = [
    {"_id": "ana", "account": "acme", "apps": ["a1", "a2"]},
    {"_id": "bo", "account": "acme", "apps": ["a3"]},
    {"_id": "cy", "account": "globex"},
    {"_id": "_design/by-account", "views": {}},
]


def test_the_first_load_counts_every_document_but_design_ones_and_readyz_turns_ready(fed):
    users = fed(USERS)
    wait_until("the first load's records", lambda: users.records() == 3)
    wait_until("/readyz answers 200", lambda: users.server.is_ready())
    assert users.metric("portcullis_data_updates_total", source="users", result="applied") >= 1
    assert users.metric("portcullis_data_age_seconds", source="users") is not None


def test_a_change_and_a_deletion_are_applied_promptly(fed):
    users = fed(USERS)
    wait_until("the first load", lambda: users.records() == 3)
    users.couch.put(users.database, {"_id": "dee", "account": "acme"})
    wait_until("a new document's record", lambda: users.records() == 4)
    users.couch.delete(users.database, "ana")
    wait_until("a deleted document's record removed", lambda: users.records() == 3)


def test_a_dropped_feed_resumes_from_the_last_seq_without_reading_again_from_zero(fed):
    users = fed(USERS)
    wait_until("the first load", lambda: users.records() == 3)
    users.couch.put(users.database, {"_id": "dee"})
    wait_until("a change before the drop", lambda: users.records() == 4)
    last_seq = str(users.couch.update_seq(users.database))
    followed = len(users.couch.changes_requests(users.database))
    users.couch.drop_connections()
    resumed = wait_until(
        "the feed opened again",
        lambda: [query for query in users.couch.changes_requests(users.database)[followed:] if query.get("feed") == "continuous"],
    )
    assert resumed[0]["since"] == last_seq, resumed
    assert [query["since"] for query in users.couch.changes_requests(users.database)].count("0") == 1, "never read again from 0"
    users.couch.put(users.database, {"_id": "eve"})
    wait_until("a change after the drop", lambda: users.records() == 5)


def test_a_change_over_the_limit_is_refused_and_logged_and_the_last_good_table_stays(fed):
    users = fed(USERS, records=3)
    wait_until("the first load", lambda: users.records() == 3)
    users.couch.put(users.database, {"_id": "dee"})
    wait_until(
        "the refusal counted",
        lambda: (users.metric("portcullis_data_updates_total", source="users", result="refused_over_limit") or 0) >= 1,
    )
    refusal = next(line for line in users.log().splitlines() if "Data source update refused" in line)
    for part in ["source=users", "users.yaml:1", "4 records", "over its limits of 3 records"]:
        assert part in refusal, refusal
    assert users.records() == 3


def test_the_authorization_file_content_never_reaches_the_log(fed):
    users = fed(USERS)
    wait_until("the first load", lambda: users.records() == 3)
    users.couch.drop_connections()
    wait_until("the drop logged", lambda: "changes feed dropped" in users.log())
    assert SECRET.split()[1] not in users.log()
