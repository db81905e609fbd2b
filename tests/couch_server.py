"""A CouchDB-protocol server for the data source tests: tests/couchdb/server.mjs (express-pouchdb over
in-memory PouchDB) run with node. Start, stop, restart on the same port, drop every open connection,
create databases, put and delete documents, and read its request log.

Its data lives in memory: a restart keeps the port and loses the data; `drop_connections` ends the
open changes feeds and keeps the data, the way a network cut or a proxy's idle timeout does.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "couchdb"


class CouchServer:
    def __init__(self, port: int = 0):
        self.port = port
        self.process: subprocess.Popen | None = None
        self._requests: list[dict] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "CouchServer":
        """Starts the server (on the port it had, when restarted) and waits until it listens."""
        self.process = subprocess.Popen(
            ["node", str(PACKAGE / "server.mjs"), "--port", str(self.port)],
            cwd=PACKAGE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()  # a hang guard is the test's own timeout
        if not first.startswith("listening "):
            raise RuntimeError(f"the CouchDB server did not start: {first}{self.process.stdout.read()}")
        self.port = int(first.split()[1])
        threading.Thread(target=self._read_log, args=(self.process.stdout,), daemon=True).start()
        return self

    def _read_log(self, stream) -> None:
        for line in stream:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._requests.append(entry)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stops the server and starts it again on the same port (its in-memory data is lost)."""
        self.stop()
        self.start()

    def requests(self) -> list[dict]:
        """Every request received so far, in order: {"method", "url"}."""
        with self._lock:
            return list(self._requests)

    def changes_requests(self, database: str) -> list[dict[str, str]]:
        """The query of each `_changes` request to `database`, in order."""
        prefix = f"/{database}/_changes"
        return [
            dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(entry["url"]).query))
            for entry in self.requests()
            if entry["method"] == "GET" and entry["url"].startswith(prefix)
        ]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read() or b"{}")

    def create(self, database: str) -> None:
        answer = self.call("PUT", f"/{database}")
        assert answer.get("ok") or answer.get("error") == "file_exists", answer

    def put(self, database: str, document: dict) -> str:
        """Writes `document` (a new revision when it exists); returns its new `_rev`."""
        document = dict(document)
        current = self.call("GET", f"/{database}/{urllib.parse.quote(document['_id'], safe='')}")
        if "_rev" in current:
            document["_rev"] = current["_rev"]
        answer = self.call("PUT", f"/{database}/{urllib.parse.quote(document['_id'], safe='')}", document)
        assert answer.get("ok"), answer
        return answer["rev"]

    def delete(self, database: str, document_id: str) -> None:
        quoted = urllib.parse.quote(document_id, safe="")
        current = self.call("GET", f"/{database}/{quoted}")
        answer = self.call("DELETE", f"/{database}/{quoted}?rev={current['_rev']}")
        assert answer.get("ok"), answer

    def update_seq(self, database: str):
        """The database's current `update_seq`: the `seq` of its last change."""
        return self.call("GET", f"/{database}")["update_seq"]

    def drop_connections(self) -> None:
        """Closes every open connection, changes feeds included; the data stays."""
        assert self.call("POST", "/_test/drop").get("ok")


def wait_until(why: str, holds, timeout: float = 60.0):
    """Polls `holds` until it returns a truthy value, which it returns; a hang guard, not a timing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = holds()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:.0f} s: {why}")
