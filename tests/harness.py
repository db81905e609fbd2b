"""Process and network helpers shared by every Python suite (loopback only): ports, processes, the server under test, raw HTTP requests, and the recording upstream."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10.0
HTTP_REQUEST_TIMEOUT_S = 5.0

# name -> log file of every process the suite started; shown when a test fails.
PROCESS_LOGS: dict[str, Path] = {}


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """GET url with headers; returns (status, body, headers) for any HTTP status."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
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


def eventually(condition, what: str, timeout: float = 30.0) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds, a hang guard, not an
    expectation of speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


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


# ---------------------------------------------------------------- the server under test

READY_TIMEOUT_S = 10.0
CHANNEL_READY_TIMEOUT_S = 5


def portcullis_binary() -> Path:
    binary = Path(os.environ.get("PORTCULLIS_BIN", REPO_ROOT / "target/debug/portcullis"))
    if not binary.is_file():
        pytest.fail(f"portcullis binary not found at {binary}: run `cargo build` or set PORTCULLIS_BIN")
    return binary


def _env_without_settings() -> dict[str, str]:
    """Our environment minus PORTCULLIS_* settings, so only the command line configures the server."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PORTCULLIS_")}


@dataclass
class PortcullisServer:
    """A running `portcullis serve` with its three loopback listeners."""

    process: subprocess.Popen
    grpc_port: int
    http_port: int
    admin_port: int
    log: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def admin_get(self, path: str) -> tuple[int, bytes]:
        status, body, _ = http_get(self.admin_url(path))
        return status, body

    def is_ready(self) -> bool:
        return answers_200(self.admin_url("/readyz"))


def start_portcullis(
    policies: Path, log: Path, *, ready_path: str = "/readyz", ready_timeout: float = READY_TIMEOUT_S, settings: str | None = None
) -> PortcullisServer:
    """Start `portcullis serve` and wait until ready_path answers 200 (`/healthz`: only listening).

    settings: the text of a settings file (`--config`), written beside the log; none by default
    (then the HTTP door is off: `http_mode: nginx` in it serves the door).
    """
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    config = []
    if settings is not None:
        settings_file = log.with_suffix(".settings.yaml")
        settings_file.write_text(settings)
        config = ["--config", str(settings_file)]
    command = [
        str(portcullis_binary()),
        "serve",
        *config,
        "--policies",
        str(policies),
        "--grpc-listen",
        f"127.0.0.1:{grpc_port}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_env_without_settings())
    server = PortcullisServer(process, grpc_port, http_port, admin_port, log)
    PROCESS_LOGS[log.stem] = log
    try:
        wait_until(lambda: answers_200(server.admin_url(ready_path)), ready_timeout, f"portcullis ({policies})", process, log)
    except BaseException:
        stop_process(process)
        raise
    return server


def open_grpc_channel(target: str):
    """A plaintext gRPC channel to target, once connected (grpc.Channel; close it when done)."""
    import grpc  # noqa: PLC0415  (only the suites that speak gRPC need it)

    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=CHANNEL_READY_TIMEOUT_S)
    return channel


# ---------------------------------------------------------------- raw HTTP


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names; repeated ones joined by ", "

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def send(port: int, method: str, target: str, headers: dict[str, str] | None = None) -> Answer:
    """One request with the target exactly as given (no client-side normalization)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_REQUEST_TIMEOUT_S)
    try:
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        all_headers = {"content-type": "application/json"} if body else {}
        all_headers.update(headers or {})
        connection.putrequest(method, target, skip_host="host" in {name.lower() for name in all_headers})
        for name, value in all_headers.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        collected: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            collected[key] = f"{collected[key]}, {value}" if key in collected else value
        return Answer(response.status, response.read(), collected)
    finally:
        connection.close()


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


def sso_helpers():
    """tests/sso/conftest.py (the OIDC provider fixture, the sso settings, the cookie-keeping
    client) as a module named `sso_helpers`, for suites with a conftest of their own; loaded once."""
    import importlib.util  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if "sso_helpers" not in sys.modules:
        sys.path.insert(0, str(REPO_ROOT / "tests" / "sso"))  # its `sso_shared`
        spec = importlib.util.spec_from_file_location("sso_helpers", REPO_ROOT / "tests/sso/conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sso_helpers"] = module  # before running it: its dataclasses look it up
        spec.loader.exec_module(module)
    return sys.modules["sso_helpers"]
