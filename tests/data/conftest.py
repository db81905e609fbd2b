"""The fixtures of tests/data: the CouchDB-protocol server, and a portcullis whose policies declare a
data source fed by one of its databases."""

from __future__ import annotations

import itertools
import pytest
from couch_server import CouchServer
from data_source import DATA_SOURCE, SECRET, Fed

_databases = itertools.count()


@pytest.fixture(scope="session")
def couch():
    server = CouchServer().start()
    yield server
    server.stop()


@pytest.fixture
def fed(couch, launch_portcullis, tmp_path_factory):
    """factory: fed(documents, records=limit) fills a new database and starts a portcullis on it."""

    def start(documents: list[dict], records: int = 1000) -> Fed:
        database = f"users{next(_databases)}"
        couch.create(database)
        for document in documents:
            couch.put(database, document)
        work = tmp_path_factory.mktemp("data")
        authorization = work / "couch-authorization"
        authorization.write_text(SECRET + "\n")
        policies = work / "policies"
        policies.mkdir()
        (policies / "users.yaml").write_text(
            DATA_SOURCE.format(url=f"{couch.url}/{database}", authorization=authorization, records=records)
        )
        server = launch_portcullis(policies, ready_path="/healthz", settings="reload_poll_interval_ms: 100\n")
        return Fed(server, couch, database)

    return start
