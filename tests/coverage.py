#!/usr/bin/env python3
"""Line coverage of the product's code (src/ and core/src/) by every test: `make coverage`.

Builds the crate with `-C instrument-coverage` into target/coverage (its own target directory, so
the ordinary build stays warm), runs the Rust tests and the Python suites against the
instrumented server binary, merges the profiles and reports line coverage per file and in total.
It fails when the total falls under the floor in tests/coverage-floor.txt, so coverage can only
go up; raise the floor as tests grow.

The LLVM tools come from Debian's llvm-19 (`apt-get install llvm-19`): they read the profiles of
rustc's newer LLVM. $LLVM_BIN points elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "coverage"
PROFILES = WORK / "profiles"
FLOOR_FILE = ROOT / "tests" / "coverage-floor.txt"
LLVM_BIN = Path(os.environ.get("LLVM_BIN", "/usr/lib/llvm-19/bin"))
PYTHON_SUITES = ["tests/interop", "tests/e2e", "tests/jwt", "tests/sso", "tests/proxies"]
# Only the product's own code counts: not dependencies, not the tests, benches or examples.
IGNORED = r"(/\.cargo/|/rustc/|/tests/|/benches/|/examples/|_tests\.rs$|/target/)"


def run(command: list[str], env: dict[str, str], capture: bool = False) -> subprocess.CompletedProcess:
    """Runs a command from the root; its output goes to ours (so a failing test is named in the
    log) unless it is captured for parsing."""
    print("+", " ".join(command), flush=True)
    stdout = subprocess.PIPE if capture else None
    return subprocess.run(command, cwd=ROOT, env=env, check=False, stdout=stdout, text=True)


def instrumented_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " -C instrument-coverage").strip()
    env["CARGO_TARGET_DIR"] = str(WORK / "build")
    env["LLVM_PROFILE_FILE"] = str(PROFILES / "%p-%m.profraw")
    return env


def test_binaries(env: dict[str, str]) -> list[str]:
    """Builds every test target and returns the executables cargo made."""
    result = run(["cargo", "test", "--locked", "--no-run", "--message-format=json"], env, capture=True)
    if result.returncode != 0:
        sys.exit("coverage: the instrumented build failed")
    executables = []
    for line in result.stdout.splitlines():
        message = json.loads(line) if line.startswith("{") else {}
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            executables.append(message["executable"])
    return executables


def total_line_coverage(report: str) -> float:
    """The TOTAL row's line coverage, in percent, from `llvm-cov report`."""
    (total,) = [line for line in report.splitlines() if line.startswith("TOTAL")]
    percents = re.findall(r"([\d.]+)%", total)
    # Columns: regions, functions, lines, branches: the third percentage is lines.
    return float(percents[2])


def main() -> int:
    for tool in ("llvm-profdata", "llvm-cov"):
        if not (LLVM_BIN / tool).exists():
            sys.exit(f"coverage: {LLVM_BIN / tool} not found: apt-get install llvm-19, or set LLVM_BIN")
    for stale in PROFILES.glob("*.profraw") if PROFILES.exists() else []:
        stale.unlink()
    PROFILES.mkdir(parents=True, exist_ok=True)
    env = instrumented_env()
    objects = test_binaries(env)
    if run(["cargo", "build", "--locked"], env).returncode != 0:
        sys.exit("coverage: the instrumented server did not build")
    server = str(WORK / "build" / "debug" / "portcullis")
    failed = run(["cargo", "test", "--locked", "--no-fail-fast"], env).returncode != 0
    pytest = str(ROOT / ".venv" / "bin" / "pytest")
    python_env = {**env, "PORTCULLIS_BIN": server}
    failed |= run([pytest, "-q", "-p", "no:cacheprovider", *PYTHON_SUITES], python_env).returncode != 0
    if failed:
        sys.exit("coverage: tests failed under instrumentation")

    merged = WORK / "merged.profdata"
    profiles = [str(path) for path in PROFILES.glob("*.profraw")]
    merge = [str(LLVM_BIN / "llvm-profdata"), "merge", "-sparse", "-o", str(merged), *profiles]
    if subprocess.run(merge, check=False).returncode != 0:
        sys.exit("coverage: llvm-profdata merge failed")
    report_command = [str(LLVM_BIN / "llvm-cov"), "report", f"-instr-profile={merged}", f"-ignore-filename-regex={IGNORED}", server]
    for executable in objects:
        report_command += ["-object", executable]
    report = subprocess.run(report_command, cwd=ROOT, check=False, stdout=subprocess.PIPE, text=True).stdout
    (WORK / "report.txt").write_text(report)
    print(report)
    covered = total_line_coverage(report)
    floor = float(FLOOR_FILE.read_text().split()[0])
    print(f"coverage: {covered:.2f}% of the lines of src/ and core/src/ (floor {floor:.2f}%); per file: target/coverage/report.txt")
    if covered < floor:
        print(f"coverage: under the floor of {floor:.2f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
