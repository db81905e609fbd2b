"""`make demo` works: its `--check` mode starts the demo and finds allow, 403 and 401 through Envoy."""

from __future__ import annotations

import os
import subprocess
import sys

from harness import REPO_ROOT


def test_the_demo_shows_allow_403_and_401_through_envoy():
    binary = os.environ.get("PORTCULLIS_BIN", str(REPO_ROOT / "target/debug/portcullis"))
    command = [sys.executable, str(REPO_ROOT / "deploy/demo/run.py"), "--check", "--portcullis", binary]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for outcome in ("anonymous GET: 200", "anonymous POST: 403", "POST with a bad token: 401", "alice's POST: 200"):
        assert f"ok   {outcome}" in result.stdout, result.stdout
