"""The fixtures of tests/data: the CouchDB-protocol server, and a portcullis whose policies declare a
data source fed by one of its databases."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from couch_server import CouchServer

# The Authorization header value the feed sends, from its file: never in a log line.
SECRET = "Bearer s3cret-data-token"

DATA_SOURCE = """\
apiVersion: portcullis.dev/v1alpha1
kind: DataSource
metadata:
  name: users
spec:
  key: _id
  fields: [account, apps]
  couchdb: {{url: "{url}", authorizationFile: {authorization}}}
  limits: {{records: {records}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-all, namespace: istio-system}}
spec:
  action: ALLOW
  rules: [{{}}]
"""


@pytest.fixture(scope="session")
def couch():
    server = CouchServer().start()
    yield server
    server.stop()


@dataclass
class Fed:
    """A portcullis following one CouchDB database as the data source `users`."""

    server: object
    couch: CouchServer
    database: str

    def metric(self, name: str, **labels: str) -> float | None:
        status, body = self.server.admin_get("/metrics")
        assert status == 200
        wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
        match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", body.decode(), re.MULTILINE)
        return float(match.group(1)) if match else None

    def records(self) -> float | None:
        return self.metric("portcullis_data_records", source="users")

    def log(self) -> str:
        return self.server.log.read_text(errors="replace")


_databases = itertools.count()


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
        # The feeds start before the doors open: by now a build that reads DataSource said so.
        if "Data source declared" not in Path(server.log).read_text(errors="replace"):
            pytest.skip("this build does not compile DataSource documents yet")
        return Fed(server, couch, database)

    return start
