"""Process and network helpers shared by the interop and e2e suites (loopback only)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
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
