"""What the data source suites share: the secret the feed sends, the policy file declaring a source
fed by a CouchDB database, and the running server's view of it (a module name of its own: every
suite's conftest is a module named `conftest`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
