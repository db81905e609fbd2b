"""Shared fixtures: start the portcullis binary on loopback ports and show process logs on failure."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import PROCESS_LOGS, REPO_ROOT, answers_200, free_port, http_get, log_tail, stop_process, wait_until

SHIPPED_POLICIES = REPO_ROOT / "policies"
READY_TIMEOUT_S = 10.0


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


@pytest.fixture(scope="session")
def launch_portcullis(tmp_path_factory):
    """Factory: launch_portcullis(policies_dir) starts a server; all are SIGTERMed at session end and must exit 0."""
    started: list[PortcullisServer] = []
    log_dir = tmp_path_factory.mktemp("portcullis-logs")

    def launch(policies: Path = SHIPPED_POLICIES, **options) -> PortcullisServer:
        """options: those of start_portcullis (ready_path, ready_timeout, settings)."""
        server = start_portcullis(policies, log_dir / f"portcullis-{len(started)}.log", **options)
        started.append(server)
        return server

    yield launch
    exits = [(server, stop_process(server.process)) for server in started]
    unclean = [f"{s.log.name}: exit {code} on SIGTERM (want 0)\n{log_tail(s.log)}" for s, code in exits if code != 0]
    if unclean:
        pytest.fail("\n".join(unclean))


@pytest.fixture(scope="session")
def shipped_policies() -> Path:
    return SHIPPED_POLICIES


@pytest.fixture(scope="session")
def portcullis(launch_portcullis) -> PortcullisServer:
    """The server with the shipped policies/ (job-board.yaml, mesh-wide.yaml)."""
    return launch_portcullis(SHIPPED_POLICIES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the tail of every process log to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, path in PROCESS_LOGS.items():
            report.sections.append((f"{name} log (tail)", log_tail(path, 4000)))
