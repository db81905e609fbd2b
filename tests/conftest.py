"""Shared fixtures: start the portcullis binary on loopback ports and show process logs on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import PROCESS_LOGS, REPO_ROOT, PortcullisServer, log_tail, start_portcullis, stop_process

SHIPPED_POLICIES = REPO_ROOT / "policies"


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
