"""Process and network helpers shared by every Python suite (loopback only): ports, processes, and the recording upstream."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10.0

# name -> log file of every process the suite started; shown when a test fails.
PROCESS_LOGS: dict[str, Path] = {}


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes, dict[str, str]]:
    """GET url; returns (status, body, headers) for any HTTP status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def answers_200(url: str) -> bool:
    """True when url answers 200 right now; connection errors count as not ready."""
    try:
        return http_get(url, timeout=0.5)[0] == 200
    except OSError:
        return False


def log_tail(path: Path, max_chars: int = 8000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log file)"
    return text[-max_chars:]


def wait_until(condition, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    """Poll condition() until true; fail early if process died, or after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what}: process exited with {process.returncode}\n{log_tail(log)}")
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{what}: not ready after {timeout}s\n{log_tail(log)}")


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# ---------------------------------------------------------------- the protected workload


@dataclass
class Seen:
    """One request as it reached the upstream: every header line, in order, names lower-cased."""

    method: str
    path: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def names(self) -> set[str]:
        return {key for key, _ in self.headers}


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _record(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = [(name.lower(), value) for name, value in self.headers.items()]
        self.server.seen.append(Seen(self.command, self.path, headers))
        body = json.dumps({"method": self.command, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _record

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class RecordingUpstream(ThreadingHTTPServer):
    """The protected workload: a loopback HTTP server remembering every request that reached it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.seen: list[Seen] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def paths_seen(self) -> list[str]:
        return [request.path for request in self.seen]


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """Serves `server` from a thread of its own until the block ends, then closes it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_TIMEOUT_S)
