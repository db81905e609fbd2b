#!/usr/bin/env python3
"""portcullis's benchmark suite: builds, runs every benchmark on pinned cores, writes bench/results.md.

    python3 bench/run.py           # `make bench`: the full run, 10-20 minutes on the 2-core machine
    python3 bench/run.py --smoke   # `make bench-smoke`: every part briefly, debug build, no targets

The server runs on core 0 (`taskset -c 0`), the single-threaded load generator on core 1. Every
figure of a results file comes from the run that wrote it. The full run exits 1 only when a
benchmark is broken (an error, or an answer other than the one expected); a missed target is
reported in the results, not as a failure. The smoke run writes target/bench/results-smoke.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_compare  # noqa: E402  (bench/envoy_compare.py, beside this file)

ROOT = Path(__file__).resolve().parent.parent
# Cargo's target directory: CARGO_TARGET_DIR when set (relative to the repository), else target/.
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
WORK = ROOT / "target" / "bench"
CRITERION_HOME = WORK / "criterion"
CRYPTO_MANIFEST = "bench/crypto-backends/Cargo.toml"
SERVER_CPU, GENERATOR_CPU = "0", "1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """How long and how big each part runs."""

    smoke: bool
    warmup: float  # seconds of load before each measured window
    duration: float  # the closed-loop windows at full load
    lone_duration: float  # one connection, one stream
    lone_rounds: int  # lone runs, alternating (a) and (b), both servers up
    full_rounds: int  # full-load runs, alternating (a) and (b), both servers up
    open_duration: float  # the latency-at-load run
    cold_duration: float  # distinct tokens; ends early if the tokens run out
    tokens: int  # distinct tokens signed per algorithm
    policies: int  # the memory run's synthetic policies
    memory_tokens: int  # distinct tokens sent through the memory run's cache
    quiet_wait: float  # seconds to wait, before each part, for other processes to leave the cores
    cold_rounds: int  # cold RS256 runs, each on a freshly started server
    compare_duration: float  # each load of the Istio in-proxy comparison (bench/envoy_compare.py)
    policy_rounds: int = 5  # criterion runs of check_policies/10 and /10000, for their ratio
    flood_rounds: int = 3  # bad-token floods, each round on a freshly started server
    connections: int = 4
    streams: int = 16

    @property
    def profile_dir(self) -> Path:
        return TARGET / ("debug" if self.smoke else "release")

    @property
    def release_flag(self) -> list[str]:
        return [] if self.smoke else ["--release"]


FULL = Plan(False, warmup=2, duration=8, lone_duration=4, lone_rounds=5, full_rounds=5, open_duration=10, cold_duration=8,
            tokens=100_000, policies=10_000, memory_tokens=100_000, quiet_wait=30, cold_rounds=3, compare_duration=8)
SMOKE = Plan(True, warmup=0.2, duration=0.5, lone_duration=0.5, lone_rounds=1, full_rounds=1, open_duration=0.5, cold_duration=0.5,
             tokens=300, policies=1_000, memory_tokens=300, quiet_wait=0, cold_rounds=1, compare_duration=0.5,
             flood_rounds=1)

# The servers of the warm rounds: the do-nothing server on each tokio runtime, and portcullis.
# (a), the ceiling of every target, is the current-thread one: the do-nothing server at its
# best on that core.
CEILING_RUNTIMES = {"a": "current-thread", "a_mt": "multi-thread"}
# The request weights of the full-load rounds: the suffix of their keys, and what they carry.
WEIGHTS = {"": "heavy", "_light": "light"}

# The targets of the benchmark suite (bench/README.md). A target with rounds counts as met only
# when most of its rounds meet it.
WARM_THROUGHPUT_SHARE = 0.85  # (b) ≥ 85% of (a), with heavy and with light requests
LONE_P50_RATIO = 1.15  # (b) lone p50 ≤ 1.15 × (a) lone p50
HALF_LOAD_P99_US = 1000.0  # p99 at half of (b)'s maximum rate ≤ 1 ms
COLD_EXTRA_SIGNATURES = 1.2  # (c)'s server CPU per Check ≤ (b)'s + 1.2 × one RS256 signature
POLICY_SCALING = 2.0  # 10,000 policies ≤ 2 × 10 policies per Check
OTHER_CREDENTIAL_RATIO = 1.1  # a check with a session, API key, ... ≤ 1.1 × a warm-token check
# The criterion benchmarks of checks with other credentials, compared with `check/job_board_warm_token`.
OTHER_CREDENTIALS = {
    "check/job_board_session": "a browser session (in-memory store)",
    "check/job_board_api_key": "an API key",
    "check/job_board_opaque_cached": "an opaque token whose introspection answer is cached",
    "check/job_board_revocation_100k": "a warm token with 100,000 entries in the revocation list",
}
# The floods of bad tokens, (h): their key suffix, the loadgen's `--tokens` mode and what each
# request carries, made from the RS256 fixture tokens. Every answer must be the 401 of a
# refused token.
FLOODS = {
    "bad_reused": ("bad-reused", "one RS256 token with an altered signature on every request"),
    "bad_distinct": ("bad-distinct", "a distinct RS256 token with an altered signature per request"),
    "unknown_key": ("unknown-key", "a distinct token per request whose header names a kid no issuer has"),
}
FLOOD_ANSWER = "unauthenticated_401"
# Server CPU per Check of each flood against (b)'s: a repeated bad token costs a lookup, a
# distinct one at most one signature.
FLOOD_REPEAT_RATIO = 1.1  # bad-reused ≤ 1.1 × (b)
FLOOD_EXTRA_SIGNATURES = 1.0  # bad-distinct and unknown-key ≤ (b) + one RS256 signature
REJECTED_TOKEN_CACHE_ENTRIES = 10_000  # the server's default `rejected_token_cache_entries`, its bound
LOAD_SECONDS = 2.0  # loading 10,000 policies
RSS_MIB = 64.0  # with 10,000 policies and 100,000 cached tokens


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + shlex.join(argv))
    return subprocess.run(argv, cwd=ROOT, check=True, **kwargs)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would reconfigure portcullis or its logging."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PORTCULLIS_", "OTEL_")) and k != "RUST_LOG"}
    env.update(extra)
    return env


# --- the machine ------------------------------------------------------------------------------

def core_busy_ticks() -> dict[str, int]:
    """Busy (non-idle) clock ticks of each core since boot, from /proc/stat."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if re.fullmatch(r"cpu\d+", name):
            ticks = [int(v) for v in values[:8]]
            busy[name[3:]] = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    return busy


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a running process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(plan: Plan) -> float:
    """Waits (at most plan.quiet_wait) until other processes leave both cores nearly idle;
    returns the busy share of the busiest core in the last two-second sample."""
    deadline = time.monotonic() + plan.quiet_wait
    while True:
        before = core_busy_ticks()
        time.sleep(2)
        after = core_busy_ticks()
        busiest = max((after[c] - before[c]) / CLOCK_TICKS / 2 for c in after)
        if busiest < 0.10 or time.monotonic() >= deadline:
            if busiest >= 0.10:
                log(f"other processes keep a core {busiest:.0%} busy; measuring anyway")
            return busiest
        log(f"waiting for other processes to leave the cores ({busiest:.0%} busy)")
        time.sleep(8)


def machine_facts() -> dict[str, str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field_of = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
                for line in lscpu.splitlines() if ":" in line}
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), "0")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    version = lambda *argv: subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    return {
        "cpu": f"{field_of.get('Model name', '?')}, {field_of.get('CPU(s)', '?')} CPUs "
               f"({field_of.get('Thread(s) per core', '?')} thread(s) per core), "
               f"hypervisor {field_of.get('Hypervisor vendor', 'none')}",
        "nproc": version("nproc"),
        "memory": f"{int(memory) / MIB:.1f} GiB",
        "kernel": platform.release(),
        "rustc": version("rustc", "--version"),
        "commit": (git.stdout.strip() or "?") + (" with uncommitted changes" if dirty else ""),
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# --- building ---------------------------------------------------------------------------------

def build(plan: Plan) -> None:
    release = plan.release_flag
    # The product binary alone: dev-dependency features stay out of it.
    run(["cargo", "build", "--locked", *release, "--bin", "portcullis"])
    examples = [arg for name in ("loadgen", "noop_server", "bench_fixtures") for arg in ("--example", name)]
    run(["cargo", "build", "--locked", *release, *examples])
    if not plan.smoke:
        run(["cargo", "bench", "--locked", "--no-run", "--bench", "core", "--bench", "tokens"])
        run(["cargo", "bench", "--locked", "--no-run", "--bench", "backends", "--manifest-path", CRYPTO_MANIFEST,
             "--target-dir", "target"])


# --- processes --------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Server:
    """A server pinned to the server core; knows its addresses from its `Listening` log lines."""

    def __init__(self, name: str, argv: list[str], *, admin: bool = True):
        self.name = name
        self.argv = argv
        started = time.monotonic()
        self.process = subprocess.Popen(["taskset", "-c", SERVER_CPU, *argv], cwd=ROOT, env=clean_env(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.doors: dict[str, str] = {}
        deadline = started + 120
        while "grpc" not in self.doors or (admin and "admin" not in self.doors):
            try:
                line = ANSI.sub("", self.lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"{name}: no `Listening` line in time") from None
            if match := re.search(r"door=(\w+) address=(\S+)", line):
                self.doors[match[1]] = match[2]
            elif self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {line}")
        self.listening_secs = time.monotonic() - started
        if "admin" in self.doors:
            self._wait_ready(deadline)
        self.ready_secs = time.monotonic() - started

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line)

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.doors['admin']}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} never became ready")

    @property
    def grpc(self) -> str:
        return self.doors["grpc"]

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024

    def metric(self, name: str) -> float | None:
        with urllib.request.urlopen(f"http://{self.doors['admin']}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class LoadRun:
    """One load-generator run and what the machine did meanwhile."""

    key: str
    what: str
    report: dict
    command: str
    expected: str  # the answer every request must get
    other_load: dict[str, float] = field(default_factory=dict)  # core → busy share of other processes

    def figure(self, path: str) -> float:
        value = self.report
        for part in path.split("/"):
            value = value[part]
        return float(value) if value is not None else float("nan")

    @property
    def throughput(self) -> float:
        return self.figure("throughput_per_sec")

    def latency(self, quantile: str) -> float:
        return self.figure(f"latency_us/{quantile}")

    def observations(self, other_load: bool = True) -> list[str]:
        """What the figures of this run say about where its time went (and, with `other_load`,
        what else ran on the machine meanwhile)."""
        found = []
        p50, server_busy = self.latency("p50"), self.figure("server_cpu_share")
        generator_busy = self.figure("generator_cpu_share")
        if 38_000 <= p50 <= 50_000 and server_busy < 0.5:
            found.append(f"{self.key}: p50 {p50 / 1000:.0f} ms with the server core {server_busy:.0%} busy: requests "
                         "wait, they are not computed. About 40 ms per request is Linux's delayed-ACK timeout "
                         "meeting Nagle's algorithm on a socket without TCP_NODELAY.")
        elif self.report["mode"] == "closed" and self.report["connections"] * (self.report["streams_per_connection"] or 1) > 1:
            if generator_busy >= 0.9 and server_busy < 0.9:
                found.append(f"{self.key}: the generator's core was {generator_busy:.0%} busy and the server's "
                             f"{server_busy:.0%}: this figure is bounded by the generator, not the server.")
            elif server_busy < 0.8:
                found.append(f"{self.key}: neither core was saturated (server {server_busy:.0%}, generator "
                             f"{generator_busy:.0%}).")
        if self.report["mode"] == "open" and self.report["outcomes"].get("errors"):
            found.append(f"{self.key}: the server fell behind the open loop: {self.report['outcomes']['errors']:,} "
                         f"requests failed (first: {self.report.get('first_error')}).")
        busiest_other = max(self.other_load.values(), default=0.0)
        if other_load and busiest_other >= 0.15:
            found.append(f"{self.key}: time not accounted to the server or the generator (other processes, "
                         f"interrupts) took up to {busiest_other:.0%} of a core during the run.")
        return found

    def problems(self) -> list[str]:
        outcomes = self.report["outcomes"]
        found = []
        if self.report["checks"] == 0:
            found.append(f"{self.key}: no check was measured")
        unexpected = {k: v for k, v in outcomes.items() if k != self.expected and v}
        if self.report["mode"] == "open":
            # An open loop faster than the server can answer ends in errors (streams refused,
            # the bound on unanswered requests): a finding of that run (`observations`), not a
            # fault of the bench.
            unexpected.pop("errors", None)
        if unexpected:
            found.append(f"{self.key}: expected only `{self.expected}`, got {unexpected} "
                         f"(first error: {self.report.get('first_error')})")
        return found


PERF_DATA = WORK / "perf-cold.data"
PERF_TOP = 15  # symbols of the profile shown in the results


class Profile:
    """`perf record` of one process (sampling its CPU clock) while a run loads it; `finish`
    answers the symbols that took the most samples."""

    def __init__(self, pid: int):
        self.argv = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-p", str(pid), "-o", str(PERF_DATA)]
        log("$ " + shlex.join(self.argv))
        self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)

    def finish(self) -> dict:
        self.process.send_signal(signal.SIGINT)
        try:
            _, errors = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return {"skipped": "`perf record` did not stop"}
        report = ["perf", "report", "-i", str(PERF_DATA), "--stdio", "--no-children", "--sort", "dso,symbol"]
        result = subprocess.run(report, cwd=ROOT, capture_output=True, text=True)
        top = parse_perf_report(result.stdout)[:PERF_TOP]
        if not top:
            return {"skipped": f"`perf` recorded nothing usable: {(errors or result.stderr).strip()[-300:]}"}
        return {"command": shlex.join(self.argv), "report": shlex.join(report), "top": top}


def parse_perf_report(text: str) -> list[tuple[float, str, str]]:
    """(share of samples in %, object, symbol) of each line of `perf report --stdio --sort dso,symbol`;
    the columns some perf versions print after the symbol (padding, then `-` for an unknown
    source line or cycle count) are not part of it."""
    rows = []
    for line in text.splitlines():
        if match := re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.+?)(?:\s+-)*\s*$", line):
            rows.append((float(match[1]), match[2], match[3]))
    return rows


class Bench:
    """Runs the parts in order and keeps every figure for the results file."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.runs: dict[str, LoadRun] = {}
        self.memory: dict[str, float] = {}
        self.fixtures: dict = {}
        self.quiet: dict[str, float] = {}
        self.profile: dict = {}

    def binary(self, name: str) -> str:
        path = self.plan.profile_dir / name
        return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)

    def portcullis(self, name: str, policies: str) -> Server:
        return Server(name, [self.binary("portcullis"), "serve", "--policies", policies,
                             "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                             "--admin-listen", "127.0.0.1:0"])

    def make_fixtures(self) -> None:
        plan = self.plan
        out = WORK / "fixtures"
        result = run([self.binary("examples/bench_fixtures"), "--out", str(out.relative_to(ROOT)),
                      "--policies", str(plan.policies), "--rs256-tokens", str(plan.tokens),
                      "--es256-tokens", str(plan.tokens)], capture_output=True, text=True)
        self.fixtures = json.loads(result.stdout)

    def token_file(self, alg: str) -> str:
        return self.fixtures["tokens"][alg]["file"]

    def load(self, key: str, what: str, server: Server, *, expected: str = "allow", tokens: str,
             alg: str = "rs256", connections: int | None = None, streams: int | None = None,
             duration: float | None = None, warmup: float | None = None, rate: float | None = None,
             max_tokens: int | None = None, weight: str = "heavy") -> LoadRun:
        plan = self.plan
        argv = ["taskset", "-c", GENERATOR_CPU, self.binary("examples/loadgen"), "--target", server.grpc,
                "--label", key, "--format", "json",
                "--connections", str(connections or plan.connections), "--streams", str(streams or plan.streams),
                "--warmup", str(plan.warmup if warmup is None else warmup),
                "--duration", str(duration or plan.duration), "--tokens", tokens, "--request", weight,
                "--server-pid", str(server.process.pid)]
        if tokens != "none":
            argv += ["--token-file", self.token_file(alg)]
        if rate is not None:
            argv += ["--rate", f"{rate:.0f}"]
        if max_tokens is not None:
            argv += ["--max-tokens", str(max_tokens)]
        pid = server.process.pid
        time_before, busy_before = time.monotonic(), core_busy_ticks()
        server_before, generator_before = cpu_seconds(pid), children_cpu_seconds()
        result = run(argv, capture_output=True, text=True)
        time_after, busy_after = time.monotonic(), core_busy_ticks()
        server_after, generator_after = cpu_seconds(pid), children_cpu_seconds()
        report = json.loads(result.stdout)
        # What other processes took of each core while the generator ran (its whole life, which
        # includes building its requests).
        wall = time_after - time_before
        ours = {SERVER_CPU: server_after - server_before, GENERATOR_CPU: generator_after - generator_before}
        other = {core: max(0.0, (busy_after[core] - busy_before[core]) / CLOCK_TICKS - ours.get(core, 0.0)) / wall
                 for core in busy_after}
        load_run = LoadRun(key, what, report, shlex.join(argv), expected, other)
        self.runs[key] = load_run
        log(f"{key}: {load_run.throughput:,.0f} checks/s, p50 {load_run.latency('p50'):.0f} µs, "
            f"p99 {load_run.latency('p99'):.0f} µs, outcomes {report['outcomes']}")
        return load_run

    # --- the parts ---

    def noop(self, key: str) -> Server:
        return Server(key, [self.binary("examples/noop_server"), "--grpc-listen", "127.0.0.1:0",
                            "--runtime", CEILING_RUNTIMES[key]], admin=False)

    def warm_tokens(self) -> None:
        """The do-nothing server on each runtime and portcullis at full load with heavy and light
        requests, then alone, in rounds that alternate the servers with all of them up, so that
        drift of the machine between parts cannot pass for a difference between the servers;
        then (b) at half its rate."""
        plan = self.plan
        self.quiet["warm"] = wait_for_quiet(plan)
        servers: list[tuple[str, str, Server]] = []
        try:
            for key, runtime in CEILING_RUNTIMES.items():
                servers.append((key, f"({key}) do-nothing server, {runtime} runtime", self.noop(key)))
            server = self.portcullis("warm", str((WORK / "fixtures" / "job-board").relative_to(ROOT)))
            servers.append(("b", "(b) portcullis, job-board, one RS256 token reused", server))
            self.memory["job_board_ready"] = server.rss_mib()
            for round_ in range(1, plan.full_rounds + 1):
                for suffix, weight in WEIGHTS.items():
                    for key, what, target in servers:
                        # The same request bytes for all: (a) lets the warm token ride along, unread.
                        self.load(round_key(key + suffix, round_), f"{what}, {weight} requests, full load, round {round_}",
                                  target, tokens="reuse", weight=weight)
            for round_ in range(1, plan.lone_rounds + 1):
                for key, what, target in servers:
                    self.load(round_key(f"{key}_lone", round_), f"{what}, a lone request, round {round_}", target,
                              tokens="reuse", connections=1, streams=1, duration=plan.lone_duration)
            _, b = median_pair(self.runs, "", plan.full_rounds)
            ceiling = next(target for key, _, target in servers if key == "a")
            # Open loop at half and a quarter of (b)'s closed-loop rate, portcullis and the ceiling
            # at the same rates: whether a latency comes from the check or from the transport.
            for key, what, target in (("b", "(b)", server), ("a", "(a)", ceiling)):
                for share, name in ((2, "half"), (4, "quarter")):
                    self.load(f"{key}_{name}", f"{what} at a {name} of (b)'s maximum rate, open loop", target,
                              tokens="reuse", rate=b.throughput / share, duration=plan.open_duration)
            self.memory["job_board_after_warm"] = server.rss_mib()
        finally:
            for _, _, target in servers:
                target.stop()

    def cold_tokens(self, alg: str, key: str, rounds: int = 1) -> None:
        """A distinct token per request, each round on a freshly started server (an empty cache);
        the first RS256 round under `perf record` when perf is installed."""
        self.quiet[key] = wait_for_quiet(self.plan)
        for round_ in range(1, rounds + 1):
            server = self.portcullis(f"cold-{alg}", str((WORK / "fixtures" / "job-board").relative_to(ROOT)))
            profile = self.profiler(server) if alg == "rs256" and round_ == 1 else None
            try:
                self.load(round_key(key, round_),
                          f"({key}) portcullis, job-board, a distinct {alg.upper()} token per request"
                          + (f", round {round_}" if rounds > 1 else ""), server,
                          # The smoke run's few tokens would all go in a warm-up: it measures from the start.
                          tokens="distinct", alg=alg, warmup=0 if self.plan.smoke else min(1.0, self.plan.warmup),
                          duration=self.plan.cold_duration, max_tokens=self.plan.tokens)
                if round_ == 1:
                    self.memory[f"job_board_after_{alg}_cold"] = server.rss_mib()
            finally:
                if profile:
                    self.profile = profile.finish()
                server.stop()

    def floods(self) -> None:
        """The floods of bad tokens, (h), one after the other on a freshly started server in each
        round; its RSS before and after each, and the rejected-token cache's entries after the
        distinct bad signatures."""
        plan = self.plan
        self.quiet["flood"] = wait_for_quiet(plan)
        for round_ in range(1, plan.flood_rounds + 1):
            server = self.portcullis("flood", self.fixtures["job_board"])
            try:
                self.memory[round_key("flood_ready", round_)] = server.rss_mib()
                for suffix, (mode, what) in FLOODS.items():
                    distinct = mode != "bad-reused"
                    self.load(round_key(f"h_{suffix}", round_), f"(h) portcullis, job-board, {what}"
                              + (f", round {round_}" if plan.flood_rounds > 1 else ""), server,
                              expected=FLOOD_ANSWER, tokens=mode, alg="rs256",
                              # The smoke run's few tokens would all go in a warm-up, as in (c).
                              warmup=(0 if plan.smoke else min(1.0, plan.warmup)) if distinct else None,
                              duration=plan.cold_duration if distinct else None,
                              max_tokens=plan.tokens if distinct else None)
                    self.memory[round_key(f"flood_after_{suffix}", round_)] = server.rss_mib()
                    if suffix == "bad_distinct":
                        entries = server.metric("portcullis_rejected_token_cache_entries")
                        self.memory[round_key("flood_rejected_entries", round_)] = (
                            float("nan") if entries is None else entries)
            finally:
                server.stop()

    def profiler(self, server: Server) -> "Profile | None":
        if not shutil.which("perf"):
            self.profile = {"skipped": "`perf` is not installed"}
            return None
        return Profile(server.process.pid)

    def memory_run(self) -> None:
        plan = self.plan
        self.quiet["memory"] = wait_for_quiet(plan)
        server = self.portcullis("memory", str((WORK / "fixtures" / f"mesh-{plan.policies}").relative_to(ROOT)))
        try:
            self.memory["policies"] = plan.policies
            self.memory["start_to_listening_secs"] = server.listening_secs
            self.memory["mesh_ready"] = server.rss_mib()
            self.load("memory", f"{plan.memory_tokens:,} distinct RS256 tokens through the cache, "
                                f"{plan.policies:,} policies", server,
                      tokens="distinct", alg="rs256", warmup=0, duration=3600, max_tokens=plan.memory_tokens)
            self.memory["mesh_after_tokens"] = server.rss_mib()
            self.memory["cached_tokens"] = server.metric("portcullis_token_cache_entries") or float("nan")
        finally:
            server.stop()

    def micro_benchmarks(self) -> None:
        """Criterion on the server's core, then the crypto-backend comparison."""
        if self.plan.smoke:
            # Each benchmark once, in criterion's test mode, with smaller policy sets.
            env = clean_env(BENCH_SMOKE="1")
            run(["cargo", "test", "--locked", "--bench", "core", "--bench", "tokens"], env=env)
            run(["cargo", "test", "--locked", "--bench", "backends", "--manifest-path", CRYPTO_MANIFEST,
                 "--target-dir", "target"], env=env)
            return
        self.quiet["criterion"] = wait_for_quiet(self.plan)
        shutil.rmtree(CRITERION_HOME, ignore_errors=True)
        env = clean_env(CRITERION_HOME=str(CRITERION_HOME))
        timing = ["--warm-up-time", "1", "--measurement-time", "3", "--noplot"]
        run(["taskset", "-c", SERVER_CPU, "cargo", "bench", "--locked", "--bench", "core", "--bench", "tokens",
             "--", *timing], env=env)
        run(["taskset", "-c", SERVER_CPU, "cargo", "bench", "--locked", "--bench", "backends",
             "--manifest-path", CRYPTO_MANIFEST, "--target-dir", "target", "--", *timing], env=env)
        # The 10,000 / 10 ratio again, in rounds of its own: its two figures come minutes apart
        # in the whole run, and the machine drifts in between.
        for round_ in range(2, self.plan.policy_rounds + 1):
            home = policy_round_home(round_)
            shutil.rmtree(home, ignore_errors=True)
            run(["taskset", "-c", SERVER_CPU, "cargo", "bench", "--locked", "--bench", "core", "--",
                 "^check_policies/(10|10000)$", *timing], env=clean_env(CRITERION_HOME=str(home)))


def round_key(key: str, round_: int) -> str:
    """`a`, `b_lone` for the first round, then `a_2`, `b_lone_2`, ..."""
    return key + ("" if round_ == 1 else f"_{round_}")


def median_pair(runs: dict[str, "LoadRun"], suffix: str, rounds: int) -> tuple["LoadRun", "LoadRun"]:
    """The (a), (b) runs of the round whose ratio is the median: the ratio of p50s for lone
    requests (`suffix` `_lone`), of throughputs at full load."""
    pairs = [(runs[round_key(f"a{suffix}", r)], runs[round_key(f"b{suffix}", r)]) for r in range(1, rounds + 1)]
    return median_by(pairs, lambda pair: pair_ratio(*pair, suffix))


def median_by(items: list, key) -> object:
    """The item whose key is the median (the lower one of an even count)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def pair_ratio(a: "LoadRun", b: "LoadRun", suffix: str) -> float:
    """(b) against (a): p50 for lone requests, throughput at full load."""
    return b.latency("p50") / a.latency("p50") if suffix == "_lone" else b.throughput / a.throughput


# --- criterion's figures ----------------------------------------------------------------------

def policy_round_home(round_: int) -> Path:
    return WORK / f"criterion-policies-{round_}"


def criterion_figures(home: Path = CRITERION_HOME) -> dict[str, dict[str, float]]:
    """Median and its 95% interval, in nanoseconds, of every benchmark of this run."""
    figures = {}
    for benchmark in home.glob("**/new/benchmark.json"):
        identity = json.loads(benchmark.read_text())
        median = json.loads((benchmark.parent / "estimates.json").read_text())["median"]
        interval = median["confidence_interval"]
        figures[identity["full_id"]] = {"median": median["point_estimate"],
                                        "low": interval["lower_bound"], "high": interval["upper_bound"]}
    return figures


# --- the results file -------------------------------------------------------------------------

def duration(nanoseconds: float) -> str:
    for unit, size in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if nanoseconds >= size:
            return f"{nanoseconds / size:.3g} {unit}"
    return f"{nanoseconds:.3g} ns"


def meets(value: float, bound: float, at_least: bool) -> bool:
    return value >= bound if at_least else value <= bound


def distance(value: float, bound: float, at_least: bool, unit: str = "") -> str:
    """How far `value` is from `bound`, on the side it is."""
    margin = abs(value - bound) / bound
    if meets(value, bound, at_least):
        return f"{margin:.0%} {'above' if at_least else 'below'} the {bound:g}{unit} bound"
    if not at_least and value >= 2 * bound:
        return f"{value / bound:.1f} times the {bound:g}{unit} bound"
    return f"{margin:.0%} {'short of' if at_least else 'over'} the {bound:g}{unit} bound"


def verdict(value: float, bound: float, at_least: bool, unit: str = "") -> str:
    """`met` or `missed`, and by how much, for `value ≥ bound` (at_least) or `value ≤ bound`."""
    if value != value:  # NaN
        return "not measured"
    margin = abs(value - bound) / bound
    if meets(value, bound, at_least):
        return f"**met** ({distance(value, bound, at_least, unit)})"
    if not at_least and value >= 2 * bound:
        return f"**missed**: {distance(value, bound, at_least, unit)}"
    return f"**missed** by {margin:.0%} ({'short of' if at_least else 'over'} the {bound:g}{unit} bound)"


def rounds_verdict(values: list[float], bound: float, at_least: bool, unit: str = "") -> str:
    """`met` only when most rounds meet the bound (more than half of them), with how many did
    and how far the median round is from the bound."""
    measured = [value for value in values if value == value]
    if not measured:
        return "not measured"
    met = sum(meets(value, bound, at_least) for value in measured)
    median = median_by(measured, lambda value: value)
    word = "**met**" if 2 * met > len(measured) else "**missed**"
    return f"{word}: {met} of {len(measured)} rounds meet it (the median round {distance(median, bound, at_least, unit)})"


def spread(values: list[float], shown) -> str:
    """The median round, the least and greatest, and every round in order."""
    ordered = sorted(values)
    return (f"median {shown(median_by(values, lambda value: value))} (min {shown(ordered[0])}, max "
            f"{shown(ordered[-1])}; the rounds: {', '.join(shown(value) for value in values)})")


class Report:
    """The results file, written from the raw figures of one run."""

    def __init__(self, raw: dict, plan: Plan):
        self.plan = plan
        self.command, self.seconds, self.facts = raw["command"], raw["seconds"], raw["facts"]
        self.fixtures, self.quiet, self.memory, self.criterion = raw["fixtures"], raw["quiet"], raw["memory"], raw["criterion"]
        first_round = {name: figures["median"] for name, figures in self.criterion.items()}
        self.policy_rounds = [first_round, *raw.get("policy_rounds", [])]
        self.runs = {load_run["key"]: LoadRun(**load_run) for load_run in raw["runs"]}
        self.profile, self.compare = raw.get("profile", {}), raw.get("compare", {})
        rs256 = self.fixtures["tokens"]["rs256"]
        self.token_bytes = rs256.get("bytes", float("nan")) / max(1, rs256["tokens"])

    def observed(self, *keys: str) -> str:
        return "".join(" " + note for key in keys for note in self.runs[key].observations(other_load=False))

    def crit(self, full_id: str) -> float:
        return self.criterion.get(full_id, {}).get("median", float("nan"))

    def rate(self, full_id: str) -> float:
        return 1e9 / self.crit(full_id)

    def rounds(self, key: str, rounds: int) -> list["LoadRun"]:
        return [self.runs[round_key(key, r)] for r in range(1, rounds + 1)]

    def warm_cpu_us(self) -> float:
        """(b)'s server CPU per Check (heavy requests) in the median full-load round."""
        _, b = median_pair(self.runs, "", self.plan.full_rounds)
        return b.figure("server_cpu_us_per_check")

    def warm_row(self, suffix: str) -> tuple[str, str, str, str]:
        """Warm throughput against the ceiling for one request weight, in rounds."""
        rounds = self.plan.full_rounds
        a_runs, mt_runs, b_runs = (self.rounds(key + suffix, rounds) for key in ("a", "a_mt", "b"))
        shares = [b.throughput / a.throughput for a, b in zip(a_runs, b_runs)]
        a, b = median_pair(self.runs, suffix, rounds)
        mt = mt_runs[b_runs.index(b)]
        cpu = {name: run_.figure("server_cpu_us_per_check") for name, run_ in (("a", a), ("a_mt", mt), ("b", b))}
        weight = WEIGHTS[suffix]
        return (
            f"Warm tokens, {weight} requests ({b.report.get('request_bytes', float('nan')):,.0f} bytes): (b) "
            "throughput ≥ 85% of (a)",
            f"b/a {spread(shares, lambda share: f'{share:.2f}')}; the median round: {b.throughput:,.0f} / "
            f"{a.throughput:,.0f} checks/s",
            rounds_verdict(shares, WARM_THROUGHPUT_SHARE, True),
            f"Server CPU per Check in that round: (b) {cpu['b']:.1f} µs, (a) {cpu['a']:.1f} µs "
            f"({cpu['b'] / cpu['a']:.2f}×). The multi-thread do-nothing server (a_mt) in the same round: "
            f"{mt.throughput:,.0f} checks/s, {cpu['a_mt']:.1f} µs a Check; b/a_mt = {b.throughput / mt.throughput:.2f} "
            f"(rounds {', '.join(f'{y.throughput / x.throughput:.2f}' for x, y in zip(mt_runs, b_runs))}). "
            f"The server core was {b.figure('server_cpu_share'):.0%} busy in (b), {a.figure('server_cpu_share'):.0%} "
            f"in (a), the generator's {b.figure('generator_cpu_share'):.0%} and "
            f"{a.figure('generator_cpu_share'):.0%}."
            + self.observed(*(run_.key for runs in (a_runs, b_runs) for run_ in runs)))

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, figure, verdict, why) rows."""
        plan = self.plan
        b_half = self.runs["b_half"]
        memory = self.memory
        cpu_b = self.warm_cpu_us()
        rows = [self.warm_row(suffix) for suffix in WEIGHTS]
        rows[0] = (*rows[0][:3], rows[0][3] + " The decision itself (criterion `check/job_board_warm_token_grpc`) "
                   f"costs {duration(self.crit('check/job_board_warm_token_grpc'))}.")

        a_lone, b_lone = self.rounds("a_lone", plan.lone_rounds), self.rounds("b_lone", plan.lone_rounds)
        mt_lone = self.rounds("a_mt_lone", plan.lone_rounds)
        ratios = [b.latency("p50") / a.latency("p50") for a, b in zip(a_lone, b_lone)]
        rows.append((
            f"Warm tokens: a lone request's p50 ≤ {LONE_P50_RATIO:g}× (a)'s",
            f"b/a {spread(ratios, lambda ratio: f'{ratio:.2f}×')}; p50s (b / a): "
            + "; ".join(f"{b.latency('p50'):.0f} / {a.latency('p50'):.0f} µs" for a, b in zip(a_lone, b_lone)),
            rounds_verdict(ratios, LONE_P50_RATIO, False, "×"),
            "One connection, one stream, closed loop: the round trip through both gRPC stacks and loopback. "
            "The rounds alternate the servers with all of them up. The multi-thread do-nothing server's p50s: "
            + ", ".join(f"{run_.latency('p50'):.0f} µs" for run_ in mt_lone) + "."
            + self.observed(*(run_.key for runs in (a_lone, b_lone) for run_ in runs))))

        def open_loop(run_: LoadRun) -> str:
            return (f"p99 {run_.latency('p99'):,.0f} µs, p50 {run_.latency('p50'):,.0f} µs at "
                    f"{run_.throughput:,.0f} checks/s, {run_.figure('server_cpu_us_per_check'):.1f} µs of server CPU "
                    f"a Check, the server core {run_.figure('server_cpu_share'):.0%} busy")
        rows.append((
            "Warm tokens: p99 at half load ≤ 1 ms",
            f"{open_loop(b_half)} (open loop, target {b_half.report['rate_target']:,.0f}/s)",
            verdict(b_half.latency("p99"), HALF_LOAD_P99_US, False, " µs"),
            "Half of (b)'s median full-load round (heavy requests); latency counted from each request's scheduled "
            "send time. One run. Requests sent one at a time, as an open loop sends them, are not batched the way "
            "64 requests in flight are: each costs the server a wake-up, a read and a write of its own, so the "
            "same rate keeps a core busier than in the closed loop. The ceiling at the same rate: "
            f"{open_loop(self.runs['a_half'])}. At a quarter of (b)'s rate: (b) {open_loop(self.runs['b_quarter'])}; "
            f"(a) {open_loop(self.runs['a_quarter'])}." + self.observed("b_half", "a_half")))

        signature_us = self.crit("signature/rs256") / 1e3
        cold_runs = self.rounds("c", plan.cold_rounds)
        extra = [(run_.figure("server_cpu_us_per_check") - cpu_b) / signature_us for run_ in cold_runs]
        c = median_by(cold_runs, lambda run_: run_.figure("server_cpu_us_per_check"))
        rows.append((
            f"Cold tokens: (c)'s server CPU per Check ≤ (b)'s + {COLD_EXTRA_SIGNATURES:g}× one RS256 signature",
            f"(c − b) / signature {spread(extra, lambda ratio: f'{ratio:.2f}×')}; the median round: "
            f"({c.figure('server_cpu_us_per_check'):.1f} − {cpu_b:.1f}) / {signature_us:.1f} µs",
            rounds_verdict(extra, COLD_EXTRA_SIGNATURES, False, "×"),
            "(b) is the median warm round's (heavy requests); the signature is criterion `signature/rs256` (the key "
            "parsed once). Each round starts a fresh server, so every token is new to its cache. (c)'s throughput: "
            + ", ".join(f"{run_.throughput:,.0f}" for run_ in cold_runs) + " checks/s; one core cannot pass "
            f"1 / (warm CPU + signature) = {1e6 / (cpu_b + signature_us):,.0f}/s. What the rest of a cold Check "
            "costs, stage by stage: the section below." + self.observed(*(run_.key for run_ in cold_runs))))

        rows += self.flood_rows(cpu_b, signature_us)

        warm = self.crit("check/job_board_warm_token")
        for full_id, what in OTHER_CREDENTIALS.items():
            extra_us = (self.crit(full_id) - warm) / 1e3
            ratio = (cpu_b + extra_us) / cpu_b
            rows.append((
                f"A check with {what}: ≤ {OTHER_CREDENTIAL_RATIO:g}× a warm-token check",
                f"{ratio:.2f}×: {cpu_b:.1f} µs of server CPU per warm-token Check in (b), {extra_us:+.2f} µs for "
                f"this credential's decision",
                verdict(ratio, OTHER_CREDENTIAL_RATIO, False, "×"),
                f"The decision alone: criterion `{full_id}` {duration(self.crit(full_id))} against "
                f"`check/job_board_warm_token` {duration(warm)} ({self.crit(full_id) / warm:.2f}×), the same "
                "job-board policy set and request, only the credential differing; the rest of a Check (the gRPC "
                "stack, decoding, the answer) is the same for every credential, so the difference is added to "
                "(b)'s measured server CPU per Check."))

        pairs = [(round_.get("check_policies/10", float("nan")), round_.get("check_policies/10000", float("nan")))
                 for round_ in self.policy_rounds]
        ten, ten_thousand = median_by(pairs, lambda pair: pair[1] / pair[0])
        rounds = "; ".join(f"{b / a:.2f}" for a, b in pairs)
        rows.append((
            "10,000 policies: per-Check time ≤ 2× that with 10",
            f"median of {len(pairs)} rounds: {duration(ten_thousand)} / {duration(ten)} = {ten_thousand / ten:.2f}× "
            f"(the rounds: {rounds})",
            verdict(ten_thousand / ten, POLICY_SCALING, False, "×"),
            f"With 1,000: {duration(self.crit('check_policies/1000'))} (the first round). Each namespace holds 10 "
            "policies in the 10,000 set (2 of them namespace-wide) and at most 1 in the others: the index narrows "
            "a Check to one namespace and, in it, to the policies without a selector and those whose selector's "
            "first label is the workload's: a Check evaluates up to 3 of its namespace's policies there, 1 with the "
            "10 set, and the mesh-wide DENY in both. The "
            "first round is the "
            "whole criterion run's; the others run `check_policies/10` and `/10000` alone, one after the other."))

        load = self.crit("load_policies/10000") / 1e9
        rows.append((
            "10,000 policies: loading ≤ 2 s",
            f"{load:.2f} s parse + compile + index (criterion); the server started listening "
            f"{memory['start_to_listening_secs']:.2f} s after it was started",
            verdict(load, LOAD_SECONDS, False, " s"),
            f"1,000 policies load in {duration(self.crit('load_policies/1000'))}."))

        rss = memory["mesh_after_tokens"]
        per_token_kib = (rss - memory["mesh_ready"]) * 1024 / memory["cached_tokens"]
        rows.append((
            "RSS ≤ 64 MiB with 10,000 policies and 100,000 cached tokens",
            f"{rss:.1f} MiB ({memory['mesh_ready']:.1f} MiB after loading the policies)",
            verdict(rss, RSS_MIB, False, " MiB"),
            f"{memory['cached_tokens']:,.0f} tokens held by the cache after {self.plan.memory_tokens:,} "
            "distinct ones went through it (it holds at most 100,000 by default, in 16 shards): "
            f"{per_token_kib:.1f} KiB of RSS per cached token, for tokens of about "
            f"{self.token_bytes / 1024:.1f} KiB. The policies alone stay "
            f"{'within' if memory['mesh_ready'] <= RSS_MIB else 'over'} the bound."))

        backend_rows = []
        met = True
        for alg in ("rs256", "es256"):
            aws, rust = self.crit(f"backend_verify/{alg}/aws_lc_rs"), self.crit(f"backend_verify/{alg}/rust_crypto")
            met &= aws <= rust
            backend_rows.append(f"{alg.upper()} aws_lc_rs {duration(aws)} vs rust_crypto {duration(rust)} "
                                f"({rust / aws:.1f}× {'slower' if rust > aws else 'faster'})")
        rows.append((
            "The faster crypto backend",
            "; ".join(backend_rows),
            "**met**: portcullis uses `aws_lc_rs`, the faster" if met
            else "**missed**: `rust_crypto` is faster; portcullis uses `aws_lc_rs`",
            "jsonwebtoken's own providers, each called as `jsonwebtoken::crypto::verify` calls the default "
            "(bench/crypto-backends)."))
        return rows

    def flood_rows(self, cpu_b: float, signature_us: float) -> list[tuple[str, str, str, str]]:
        """The floods of bad tokens, (h): server CPU per Check of each against (b)'s, in rounds, and
        the memory the distinct ones leave behind."""
        rounds = self.plan.flood_rounds
        cpu = {suffix: [run_.figure("server_cpu_us_per_check") for run_ in self.rounds(f"h_{suffix}", rounds)]
               for suffix in FLOODS}
        observed = lambda suffix: self.observed(*(round_key(f"h_{suffix}", r) for r in range(1, rounds + 1)))
        ratios = [value / cpu_b for value in cpu["bad_reused"]]
        rows = [(
            f"A flood of one bad token: server CPU per Check ≤ {FLOOD_REPEAT_RATIO:g}× (b)'s (a lookup)",
            f"h/b {spread(ratios, lambda ratio: f'{ratio:.2f}×')}; the median round: "
            f"{median_by(cpu['bad_reused'], lambda value: value):.1f} / {cpu_b:.1f} µs",
            rounds_verdict(ratios, FLOOD_REPEAT_RATIO, False, "×"),
            "One RS256 token with one byte of its signature changed, on every request: verified once, then refused "
            "again from the rejected-token cache for its SHA-256 and a probe; (b) is the median warm round's (heavy "
            "requests). Every answer must be a 401." + observed("bad_reused"))]
        for suffix, what, why in (
                ("bad_distinct", "distinct tokens with a bad signature",
                 "each a fixture token with one byte of its signature changed: read, one signature check that "
                 "fails, the refusal remembered (once the cache holds its bound, in place of one it "
                 "forgets)."),
                ("unknown_key", "distinct tokens naming an unknown kid",
                 "each a fixture token whose header names a `kid` the issuer's keys lack (a new one per "
                 "request): read, and refused for want of a key, with no signature check; the bench keys are "
                 "inline, so no key is fetched either (with a remote JWKS, an unknown `kid` refetches at most "
                 "once per `jwks_min_refetch_interval_secs` per issuer).")):
            extra = [(value - cpu_b) / signature_us for value in cpu[suffix]]
            rows.append((
                f"A flood of {what}: server CPU per Check ≤ (b)'s + {FLOOD_EXTRA_SIGNATURES:g}× one RS256 signature",
                f"(h − b) / signature {spread(extra, lambda ratio: f'{ratio:.2f}×')}; the median round: "
                f"({median_by(cpu[suffix], lambda value: value):.1f} − {cpu_b:.1f}) / {signature_us:.1f} µs",
                rounds_verdict(extra, FLOOD_EXTRA_SIGNATURES, False, "×"),
                f"{self.plan.tokens:,} tokens, each sent once, {why} The signature is criterion `signature/rs256`."
                + observed(suffix)))
        memory = self.memory
        entries = [memory.get(round_key("flood_rejected_entries", r), float("nan")) for r in range(1, rounds + 1)]
        growth = [memory[round_key("flood_after_unknown_key", r)] - memory[round_key("flood_ready", r)]
                  for r in range(1, rounds + 1)]
        rows.append((
            f"A flood's memory: the rejected-token cache holds ≤ {REJECTED_TOKEN_CACHE_ENTRIES:,} tokens (its bound)",
            f"{max(entries):,.0f} entries at most (the rounds: {', '.join(f'{value:,.0f}' for value in entries)}); "
            f"RSS {memory['flood_ready']:.1f} MiB ready, {memory['flood_after_bad_distinct']:.1f} MiB after the "
            f"distinct bad signatures, {memory['flood_after_unknown_key']:.1f} MiB after the unknown kids",
            verdict(max(entries), REJECTED_TOKEN_CACHE_ENTRIES, False),
            f"`portcullis_rejected_token_cache_entries` after {self.plan.tokens:,} distinct bad signatures, "
            "`rejected_token_cache_entries` at its default; a flood of more distinct tokens than the bound "
            "replaces entries and adds none. Unknown kids are not remembered (a refetch may bring the key). RSS "
            f"grew by {spread(growth, lambda mib: f'{mib:.1f} MiB')} from ready to the end of the three floods, "
            "each round on a fresh server (the first round's RSS is shown)."))
        return rows

    def cold_stages(self) -> list[tuple[str, float]]:
        """(stage, nanoseconds) of a cold RS256 check, from criterion's `cold_stage/rs256/*`."""
        stage = lambda name: self.crit(f"cold_stage/rs256/{name}")
        signature = self.crit("signature/rs256")
        return [
            ("the cache lookup that misses (the token's SHA-256, the hot slot, a shard)", stage("cache_miss")),
            ("base64url decoding of header and payload", stage("decode")),
            ("the JSON of the header and of the claims the policy set reads (`read` − `decode`)",
             stage("read") - stage("decode")),
            ("the RS256 signature (`signature/rs256`, the key parsed once)", signature),
            ("lifetime, audience and the identity built (`verify` − `signature/rs256`)", stage("verify") - signature),
            ("the identity's insert into the cache (digest already computed)", stage("cache_insert")),
        ]

    def cold_stage_section(self) -> list[str]:
        stages = self.cold_stages()
        total = sum(nanoseconds for _, nanoseconds in stages)
        cpu_b = self.warm_cpu_us()
        cold_runs = self.rounds("c", self.plan.cold_rounds)
        c = median_by(cold_runs, lambda run_: run_.figure("server_cpu_us_per_check"))
        cold_us = c.figure("server_cpu_us_per_check")
        predicted_us = cpu_b + total / 1e3
        out = ["## What each stage of a cold check costs", "",
               "Criterion, each stage alone in a loop (`benches/tokens.rs`, `cold_stage/rs256/*`), in the order "
               "the server runs them; their sum against the server CPU per Check measured under load.", "",
               "| stage | median | share of the stages |", "|---|---:|---:|"]
        out += [f"| {name} | {duration(nanoseconds)} | {nanoseconds / total:.0%} |" for name, nanoseconds in stages]
        out += [f"| **the stages' sum** | **{duration(total)}** | |", "",
                f"A warm Check costs {cpu_b:.1f} µs of server CPU ((b), heavy requests, the median round); with the "
                f"stages, a cold one would cost {predicted_us:.1f} µs. Measured in (c), the median round: "
                f"{cold_us:.1f} µs, {cold_us - predicted_us:+.1f} µs ({cold_us / predicted_us:.2f}×) against the "
                "sum. What is over the sum is the stages running slower between the transport's work (caches "
                "and branch predictors cold) than alone in a loop, and the allocator's work for the new "
                "identity's memory; the profile below shows where the server's time went.", ""]
        return out

    def profile_section(self) -> list[str]:
        if not self.profile:
            return []
        out = ["## Profile of a cold run", ""]
        if "skipped" in self.profile:
            return out + [f"Skipped: {self.profile['skipped']}.", ""]
        out += [f"`{self.profile['command']}` during the first round of (c), then `{self.profile['report']}`: "
                "the symbols with the most samples of the server's CPU clock.", "",
                "| share of samples | object | symbol |", "|---:|---|---|"]
        out += [f"| {share:.1f}% | {dso} | `{symbol.replace('|', '∣')}` |" for share, dso, symbol in self.profile["top"]]
        return out + [""]

    def compare_section(self) -> list[str]:
        return envoy_compare.render(self.compare) if self.compare else []

    def load_table(self) -> list[str]:
        lines = ["| run | checks/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/Check | server core busy | "
                 "generator core busy | other processes (core 0 / 1) | answers |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for run_ in self.runs.values():
            r = run_.report
            other = " / ".join(f"{run_.other_load.get(core, float('nan')):.0%}" for core in (SERVER_CPU, GENERATOR_CPU))
            answers = ", ".join(f"{v:,} {k}" for k, v in r["outcomes"].items() if v)
            window = f"{r['window_secs']:.1f} s" + (", tokens ran out" if r["ran_out_of_requests"] else "")
            lines.append(
                f"| {run_.what} ({window}) | {run_.throughput:,.0f} | {run_.latency('p50'):.0f} | "
                f"{run_.latency('p99'):.0f} | {run_.latency('p99_9'):.0f} | "
                f"{run_.figure('server_cpu_us_per_check'):.1f} | {run_.figure('server_cpu_share'):.0%} | "
                f"{run_.figure('generator_cpu_share'):.0%} | {other} | {answers} |")
        return lines

    def render(self) -> str:
        plan, facts = self.plan, self.facts
        out = ["# Benchmark results" + (" (smoke run: tiny durations, not figures)" if plan.smoke else ""), ""]
        out.append(f"Written by `{self.command}` in {self.seconds / 60:.1f} minutes. Every figure comes from "
                   "this one run; compare figures only within it.")
        out += ["", "## Machine", "", "| | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in facts.items()]
        busiest = max(self.quiet.values(), default=0.0)
        out.append(f"| other processes before the parts | busiest core {busiest:.0%} busy in the quietest "
                   f"sample taken before a part (the run waits up to {plan.quiet_wait:.0f} s for idle cores) |")
        out += ["", "## How it was measured", "",
                f"- The server (portcullis or the do-nothing server, `examples/noop_server.rs`) runs pinned with "
                f"`taskset -c {SERVER_CPU}`, so its tokio runtime has one worker; the load generator "
                f"(`examples/loadgen.rs`, one thread) runs with `taskset -c {GENERATOR_CPU}`. They share nothing "
                "but the loopback interface, the L3 cache and the memory bus.",
                "- The ceiling, (a), is the do-nothing server at its best on that core: tokio's current-thread "
                "runtime, each CheckRequest decoded whole by tonic's prost codec, TCP_NODELAY. (a_mt) is the same "
                "server on the multi-thread runtime (one worker, woken through the runtime's queues, as portcullis "
                "runs on more than one core); it is reported beside (a), the targets compare with (a). Portcullis, "
                "on one core, runs its checks on a current-thread runtime as (a) does (`runtime.mode: auto`).",
                f"- Full load: {plan.connections} HTTP/2 connections × {plan.streams} streams, closed loop, "
                f"{plan.warmup:g} s warm-up then {plan.duration:g} s measured, in {plan.full_rounds} rounds; each "
                "round loads (a), (a_mt) and (b) with heavy requests, then the three with light ones, all servers "
                f"up. A lone request: 1 × 1, {plan.lone_duration:g} s, in {plan.lone_rounds} rounds that "
                "alternate the three servers. **A target with rounds counts as met only when most of its rounds "
                "meet it** (more than half); each row gives the median round, the least and greatest, and every "
                "round. Latency at load: open loop at half and at a quarter of (b)'s rate, (b) then (a), "
                f"{plan.open_duration:g} s, latency counted from each scheduled send time; the generator "
                "waits for each send time by yielding, so its core shows busy in that run.",
                "- Every request is an Envoy-shaped CheckRequest (peers with SPIFFE principals, context "
                "extensions; heavy: the headers a browser's request carries through Envoy; light: only `:authority`, "
                "`:path`, `:method` and `authorization`) for "
                "`POST /api/jobcategories` on the job-board policies (`policies/job-board.yaml`, "
                "`policies/mesh-wide.yaml`) with a RequestAuthentication trusting the bench keys inline; "
                "tokens are Keycloak-shaped (iss, sub, aud, azp, exp, realm_access.roles, scope, "
                f"preferred_username, ...), about {self.token_bytes:,.0f} bytes. Requests are encoded before the "
                "timed part. (a) gets the same bytes as (b).",
                f"- (c) and (d) send each of {plan.tokens:,} pre-signed tokens once: every Check verifies a "
                f"signature. When the tokens run out the window closes there. (c) runs in {plan.cold_rounds} "
                "rounds, each on a freshly started server.",
                f"- (h) floods the server with bad tokens made from the RS256 fixtures, in {plan.flood_rounds} "
                "rounds, each on a freshly started server: one token with an altered signature on every request, "
                f"then {plan.tokens:,} distinct ones, then {plan.tokens:,} naming a `kid` no issuer has.",
                "- Answers are counted apart (allow, 403, 401, other denials, errors); every run here expects "
                "only `allow`, but (h), which expects only the 401 of a refused token.",
                "- Server CPU time is read from `/proc/PID/stat` (utime + stime) at the start and end of the "
                "measured window; RSS from `/proc/PID/status` (VmRSS).",
                "- Micro-benchmarks: criterion, pinned to core 0, 1 s warm-up, 3 s measurement; figures are "
                "medians. The policy sets are generated (`benches/fixtures/mesh.rs`): policy i lives in "
                "namespace ns-(i mod 1000) and selects workload svc-(i / 1000); five kinds rotate (reads by peer "
                "principal, writes by JWT role claim, a namespace-wide DENY of admin paths, partner calls by "
                "namespace, IP block, host, port and header, an AUDIT of exports). Each set is checked with "
                "4,096 requests drawn from the same kind of mix. The 10 and 10,000 sets are measured again in "
                f"{plan.policy_rounds - 1} more rounds of their own; their target takes the median round.", ""]

        if plan.smoke:
            out += [*self.profile_section(), *self.compare_section(),
                    "## End-to-end load (smoke)", "", *self.load_table(), "",
                    f"Memory: {json.dumps({k: round(v, 1) for k, v in self.memory.items()})}", ""]
            return "\n".join(out) + "\n"

        a, b = median_pair(self.runs, "", self.plan.full_rounds)
        c, d = self.runs["c"], self.runs["d"]
        out += ["## Targets", "", "| target | figure | result | notes |", "|---|---|---|---|"]
        out += [f"| {t} | {f} | {v} | {n} |" for t, f, v, n in self.targets()]
        observations = [note for run_ in self.runs.values() for note in run_.observations()]
        out += ["", *self.cold_stage_section(), *self.profile_section(), *self.compare_section()]
        out += ["", "## End-to-end load", "", *self.load_table(), "",
                *(f"- {note}" for note in observations), *([""] if observations else []),
                "Ratios of the same run: "
                f"b/a = {b.throughput / a.throughput:.2f}, c/a = {c.throughput / a.throughput:.2f}, "
                f"d/a = {d.throughput / a.throughput:.2f}; "
                f"c / RS256 verifications on one core = {c.throughput / self.rate('signature/rs256'):.2f}, "
                f"d / ES256 verifications on one core = {d.throughput / self.rate('signature/es256'):.2f}. "
                f"Server CPU per Check, relative to (a): "
                + ", ".join(f"{k} {run_.figure('server_cpu_us_per_check') / a.figure('server_cpu_us_per_check'):.2f}×"
                            for k, run_ in (("b", b), ("c", c), ("d", d))) + ". (a) and (b) are the median "
                "full-load round's.", "",
                "## Memory", "", "| state | RSS |", "|---|---:|"]
        labels = {
            "job_board_ready": "job-board policies, ready",
            "job_board_after_warm": "job-board, after runs (b)",
            "job_board_after_rs256_cold": "job-board, after run (c)",
            "job_board_after_es256_cold": "job-board, after run (d)",
            "mesh_ready": f"{self.memory['policies']:,.0f} policies (+ job-board), ready",
            "mesh_after_tokens": f"the same after {plan.memory_tokens:,} distinct tokens "
                                 f"({self.memory['cached_tokens']:,.0f} cached)",
            "flood_ready": "job-board, ready for the floods (h)",
            "flood_after_bad_reused": "the same after one bad token's flood",
            "flood_after_bad_distinct": f"the same after {plan.tokens:,} distinct bad signatures "
                                        f"({self.memory['flood_rejected_entries']:,.0f} rejections held)",
            "flood_after_unknown_key": f"the same after {plan.tokens:,} distinct unknown kids",
        }
        out += [f"| {label} | {self.memory[key]:.1f} MiB |" for key, label in labels.items()]
        out += ["", "## Micro-benchmarks (criterion, median, core 0)", "",
                "| benchmark | median | 95% interval | per second |", "|---|---:|---|---:|"]
        for name in sorted(self.criterion):
            f = self.criterion[name]
            out.append(f"| `{name}` | {duration(f['median'])} | {duration(f['low'])} – {duration(f['high'])} | "
                       f"{1e9 / f['median']:,.0f} |")
        signing = self.fixtures["tokens"]
        out += ["", f"Token signing for the fixtures (2 threads): RS256 {signing['rs256']['signed_per_sec']:,.0f}/s, "
                f"ES256 {signing['es256']['signed_per_sec']:,.0f}/s.", "",
                "## Commands", "", "```sh", self.command, *(r.command for r in self.runs.values()), "```", ""]
        return "\n".join(out) + "\n"


def measure(plan: Plan) -> dict:
    """Runs every part; returns everything the results file is written from."""
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    build(plan)
    bench = Bench(plan)
    bench.make_fixtures()
    bench.warm_tokens()
    bench.cold_tokens("rs256", "c", plan.cold_rounds)
    bench.cold_tokens("es256", "d")
    bench.floods()
    bench.memory_run()
    bench.micro_benchmarks()
    compare = envoy_compare.measure(plan.smoke, plan.compare_duration, bench.binary("portcullis"),
                                    WORK / "fixtures", bench.token_file("rs256"))
    return {
        "smoke": plan.smoke,
        "command": "make bench-smoke" if plan.smoke else "make bench",
        "seconds": time.monotonic() - started,
        "facts": facts,
        "fixtures": bench.fixtures,
        "quiet": bench.quiet,
        "memory": bench.memory,
        "runs": [vars(load_run) for load_run in bench.runs.values()],
        "profile": bench.profile,
        "compare": compare,
        "criterion": {} if plan.smoke else criterion_figures(),
        "policy_rounds": [] if plan.smoke else [
            {name: figures["median"] for name, figures in criterion_figures(policy_round_home(round_)).items()}
            for round_ in range(2, plan.policy_rounds + 1)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every part briefly, debug build, no targets")
    parser.add_argument("--out", type=Path, help="results file (default bench/results.md, or "
                                                 "target/bench/results-smoke.md with --smoke)")
    parser.add_argument("--render", type=Path, metavar="RAW_JSON",
                        help="measure nothing: write the results file again from a run's raw figures")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    out = args.out or (WORK / "results-smoke.md" if plan.smoke else ROOT / "bench" / "results.md")
    if os.cpu_count() is None or os.cpu_count() < 2 or not shutil.which("taskset"):
        log("needs 2 cores (one for the server, one for the load generator) and taskset (util-linux)")
        return 1
    if args.render:
        raw = json.loads(args.render.read_text())
    else:
        raw = measure(plan)
        raw_file = WORK / ("raw-smoke.json" if plan.smoke else "raw.json")
        raw_file.write_text(json.dumps(raw, indent=1))
        log(f"raw figures in {raw_file.relative_to(ROOT)}")
    report = Report(raw, SMOKE if raw["smoke"] else FULL)
    out.write_text(report.render())
    log(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    problems = [problem for load_run in report.runs.values() for problem in load_run.problems()]
    if not report.memory.get("cached_tokens"):
        problems.append("memory: the token cache stayed empty")
    if not report.memory.get("flood_rejected_entries", 0) > 0:
        problems.append("flood: the rejected-token cache stayed empty")
    problems += envoy_compare.problems(report.compare)
    for problem in problems:
        log(f"PROBLEM {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
