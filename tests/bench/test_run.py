"""The arithmetic of bench/run.py and bench/envoy_compare.py: which round is the median, which runs pair up, what a verdict says, how the tools' outputs are read and rendered."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[2] / "bench" / "run.py"
spec = importlib.util.spec_from_file_location("bench_run", RUN_PY)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


@pytest.mark.parametrize("items, expected", [
    ([3.0], 3.0),
    ([5.0, 1.0, 3.0], 3.0),
    ([4.0, 1.0, 3.0, 2.0], 2.0),  # an even count takes the lower middle
    ([2.0, 2.0, 9.0, 1.0, 2.0], 2.0),
])
def test_median_by_picks_the_middle_item_by_key(items, expected):
    assert bench.median_by(items, lambda item: item) == expected


def test_median_by_returns_the_item_not_its_key():
    pairs = [(1.0, 3.0), (1.0, 1.5), (2.0, 2.0), (1.0, 9.0), (4.0, 2.0)]  # ratios 3, 1.5, 1, 9, 0.5
    assert bench.median_by(pairs, lambda pair: pair[1] / pair[0]) == (1.0, 1.5)


def run(key: str, throughput: float, p50: float) -> "bench.LoadRun":
    report = {"throughput_per_sec": throughput, "latency_us": {"p50": p50}}
    return bench.LoadRun(key=key, what=key, report=report, command="", expected="allow")


def test_round_keys_leave_the_first_round_unnumbered():
    assert [bench.round_key("b_lone", r) for r in (1, 2, 3)] == ["b_lone", "b_lone_2", "b_lone_3"]


def test_median_pair_keeps_a_and_b_of_the_same_round():
    # Round 2 has the median throughput ratio (0.8), though neither of its runs is a median alone.
    throughputs = {1: (100.0, 95.0), 2: (50.0, 40.0), 3: (90.0, 45.0)}
    runs = {}
    for r, (a, b) in throughputs.items():
        runs[bench.round_key("a", r)] = run(bench.round_key("a", r), a, 0.0)
        runs[bench.round_key("b", r)] = run(bench.round_key("b", r), b, 0.0)
    a, b = bench.median_pair(runs, "", 3)
    assert (a.key, b.key) == ("a_2", "b_2")


def test_lone_pairs_are_ranked_by_their_p50_ratio():
    p50s = {1: (100.0, 150.0), 2: (100.0, 101.0), 3: (100.0, 120.0)}
    runs = {}
    for r, (a, b) in p50s.items():
        runs[bench.round_key("a_lone", r)] = run(bench.round_key("a_lone", r), 1.0, a)
        runs[bench.round_key("b_lone", r)] = run(bench.round_key("b_lone", r), 1.0, b)
    a, b = bench.median_pair(runs, "_lone", 3)
    assert (a.key, b.key) == ("a_lone_3", "b_lone_3")
    assert bench.pair_ratio(a, b, "_lone") == pytest.approx(1.2)


@pytest.mark.parametrize("value, bound, at_least, starts", [
    (0.86, 0.85, True, "**met** (1% above"),
    (0.85, 0.85, True, "**met** (0% above"),
    (0.31, 0.70, True, "**missed** by 56% (short of"),
    (1.8, 2.0, False, "**met** (10% below"),
    (2.86, 2.0, False, "**missed** by 43% (over"),
    (5.0, 2.0, False, "**missed**: 2.5 times"),
    (math.nan, 2.0, False, "not measured"),
])
def test_verdicts_say_met_or_missed_and_by_how_much(value, bound, at_least, starts):
    assert bench.verdict(value, bound, at_least).startswith(starts)


@pytest.mark.parametrize("nanoseconds, shown", [(950.0, "950 ns"), (1_234.0, "1.23 µs"), (2.5e6, "2.5 ms"), (3e9, "3 s")])
def test_durations_take_the_largest_unit_that_fits(nanoseconds, shown):
    assert bench.duration(nanoseconds) == shown


@pytest.mark.parametrize("values, starts", [
    ([0.90, 0.80, 0.88], "**met**: 2 of 3 rounds meet it (the median round 4% above"),
    ([0.90, 0.80, 0.84], "**missed**: 1 of 3 rounds meet it (the median round 1% short of"),
    ([0.90, 0.80, 0.88, 0.84], "**missed**: 2 of 4 rounds meet it"),  # half is not most
    ([math.nan, 0.9], "**met**: 1 of 1 rounds meet it"),  # a round not measured does not count
    ([math.nan], "not measured"),
])
def test_a_target_with_rounds_is_met_only_when_most_rounds_meet_it(values, starts):
    assert bench.rounds_verdict(values, 0.85, True).startswith(starts)


def test_a_bound_from_above_counts_the_rounds_under_it():
    assert bench.rounds_verdict([1.3, 1.1, 1.0], 1.15, False, "×").startswith("**met**: 2 of 3 rounds")


def test_the_spread_of_rounds_shows_median_least_greatest_and_every_round_in_order():
    shown = bench.spread([0.93, 1.01, 0.86], lambda value: f"{value:.2f}")
    assert shown == "median 0.93 (min 0.86, max 1.01; the rounds: 0.93, 1.01, 0.86)"


PERF_REPORT = """\
# Samples: 7K of event 'cpu-clock'
#
# Overhead  Shared Object      Symbol
# ........  .................  ..............................
#
    35.12%  portcullis         [.] aws_lc_0_32_0_bn_mul_mont
    10.40%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore
     2.05%  libc.so.6          [.] __memmove_avx_unaligned_erms
     1.10%  portcullis         [.] serde_json::read::SliceRead::skip_to_escape                       -      -
"""


def test_perf_reports_are_read_as_share_object_and_symbol():
    assert bench.parse_perf_report(PERF_REPORT) == [
        (35.12, "portcullis", "aws_lc_0_32_0_bn_mul_mont"),
        (10.40, "[kernel.kallsyms]", "_raw_spin_unlock_irqrestore"),
        (2.05, "libc.so.6", "__memmove_avx_unaligned_erms"),
        (1.10, "portcullis", "serde_json::read::SliceRead::skip_to_escape"),
    ]


# --- the Istio in-proxy comparison (bench/envoy_compare.py) ---

compare = bench.envoy_compare

H2LOAD_OUTPUT = """\
finished in 8.00s, 10234.50 req/s, 1.20MB/s
requests: 81876 total, 81900 started, 81876 done, 81870 succeeded, 6 failed, 0 errored, 0 timeout
status codes: 81870 2xx, 0 3xx, 6 4xx, 0 5xx
"""


def test_h2load_summaries_give_the_rate_and_the_answers():
    figures = compare.parse_h2load(H2LOAD_OUTPUT)
    assert figures["requests_per_sec"] == 10234.5
    assert (figures["succeeded"], figures["failed"], figures["errored"]) == (81870, 6, 0)
    assert figures["status"] == {"2xx": 81870, "3xx": 0, "4xx": 6, "5xx": 0}


def test_latency_quantiles_come_from_h2load_s_per_request_log():
    log = "".join(f"{1_700_000_000_000 + n}\t200\t{elapsed}\n" for n, elapsed in enumerate(range(1, 101)))
    assert compare.latency_quantiles(log) == {"count": 100, "p50": 51.0, "p99": 100.0}
    assert compare.latency_quantiles("")["count"] == 0


def fake_run(rps: float, p50: float, cpu: float) -> dict:
    return {"requests_per_sec": rps, "p50": p50, "p99": 2 * p50, "core0_cpu_us_per_request": cpu,
            "succeeded": 10, "errored": 0, "status": {"2xx": 10, "3xx": 0, "4xx": 0, "5xx": 0}}


def fake_comparison(in_proxy_status: int = 200) -> dict:
    runs = {}
    for key, (rps, p50, cpu) in {"e": (30_000, 1_000, 20.0), "f": (20_000, 1_500, 35.0), "g": (15_000, 2_000, 50.0)}.items():
        runs[key], runs[f"{key}_lone"] = fake_run(rps, p50, cpu), fake_run(rps / 3, p50 / 10, cpu)
    return {"smoke": True, "envoy": "1.40.0", "connections": 4, "streams": 16, "seconds": 8, "runs": runs,
            "agreement": [{"request": "GET /api/jobs without a token", "f": in_proxy_status, "g": 200}]}


def test_the_comparison_reports_what_in_proxy_and_the_ext_authz_hop_add_to_plain_envoy():
    text = "\n".join(compare.render(fake_comparison()))
    assert "| in-proxy, (f) − (e) | +500 µs | +1000 µs | +50 µs | +15.0 µs |" in text
    assert "| the ext_authz hop to portcullis, (g) − (e) | +1000 µs | +2000 µs | +100 µs | +30.0 µs |" in text
    assert "What two cores can show" in text and compare.OPA_ENVOY_URL in text


def test_an_in_proxy_answer_that_differs_from_portcullis_s_is_a_problem():
    assert compare.problems(fake_comparison()) == []
    (problem,) = compare.problems(fake_comparison(in_proxy_status=403))
    assert "in-proxy answered 403, ext_authz 200" in problem


def test_a_failed_comparison_is_a_problem_and_says_why():
    failed = {"failed": "envoy-f exited: bad config"}
    assert compare.problems(failed) == ["envoy comparison failed: envoy-f exited: bad config"]
    assert "**Failed**: envoy-f exited: bad config" in "\n".join(compare.render(failed))


def test_a_skipped_comparison_says_why_in_the_results():
    assert "Skipped: `h2load` is not installed" in "\n".join(compare.render({"skipped": "`h2load` is not installed"}))


FIXTURES = Path(__file__).resolve().parents[2] / "target" / "bench" / "fixtures"


@pytest.mark.skipif(not (compare.envoy_binary() and shutil.which("h2load") and os.environ.get("PORTCULLIS_BIN")
                         and compare.token_is_live(FIXTURES / "tokens-rs256.txt")),
                    reason="needs Envoy, h2load, PORTCULLIS_BIN and the fresh fixtures `make bench-smoke` writes")
def test_the_in_proxy_filters_allow_and_deny_as_portcullis_does():
    results = compare.measure(True, 0.3, os.environ["PORTCULLIS_BIN"], FIXTURES, str(FIXTURES / "tokens-rs256.txt"))
    assert compare.problems(results) == []
    assert {row["f"] for row in results["agreement"]} >= {200, 403, 401}


def load_report(throughput: float, p50: float, cpu_us: float, request_bytes: int = 2000,
                answer: str = "allow") -> dict:
    return {"mode": "closed", "connections": 4, "streams_per_connection": 16, "rate_target": None,
            "request_bytes": request_bytes, "ran_out_of_requests": False, "window_secs": 8.0, "checks": 100,
            "throughput_per_sec": throughput, "outcomes": {answer: 100},
            "latency_us": {"p50": p50, "p99": 2 * p50, "p99_9": 3 * p50},
            "server_cpu_us_per_check": cpu_us, "server_cpu_share": 0.99, "generator_cpu_share": 0.8}


def full_raw() -> dict:
    """The raw figures of a whole run, made up: every key the full results file reads."""
    plan = bench.FULL
    runs = []

    def add(key: str, *figures, answer: str = "allow") -> None:
        runs.append({"key": key, "what": key, "report": load_report(*figures, answer=answer), "command": "",
                     "expected": answer})

    for r in range(1, plan.full_rounds + 1):
        for suffix in bench.WEIGHTS:
            add(bench.round_key("a" + suffix, r), 30_000, 2000, 30.0)
            add(bench.round_key("a_mt" + suffix, r), 27_000, 2200, 33.0)
            add(bench.round_key("b" + suffix, r), 27_000 + 500 * r, 2100, 32.0)
    for r in range(1, plan.lone_rounds + 1):
        for key in ("a", "a_mt", "b"):
            add(bench.round_key(f"{key}_lone", r), 12_000, 80 + r, 50.0)
    for key, rate, p50 in (("b_half", 15_000, 100), ("a_half", 15_000, 90), ("b_quarter", 7_500, 80),
                           ("a_quarter", 7_500, 70)):
        add(key, rate, p50, 50.0)
        runs[-1]["report"].update(mode="open", rate_target=float(rate), streams_per_connection=None)
    for r in range(1, plan.cold_rounds + 1):
        add(bench.round_key("c", r), 13_000, 5000, 55.0 + r)
    add("d", 7_000, 9000, 140.0)
    add("memory", 13_000, 4000, 70.0)
    # Against (b)'s 32 µs and a 22.5 µs signature.
    flood_cpu = {"bad_reused": (33.0, 36.0, 34.0), "bad_distinct": (50.0, 56.0, 60.0), "unknown_key": (36.0, 37.0, 35.0)}
    for suffix, rounds in flood_cpu.items():
        for r, cpu_us in enumerate(rounds, start=1):
            add(bench.round_key(f"h_{suffix}", r), 20_000, 3000, cpu_us, answer=bench.FLOOD_ANSWER)
    stages = {"cache_miss": 900, "decode": 1_500, "read": 3_000, "verify": 24_000, "cache_insert": 400}
    criterion = {f"cold_stage/rs256/{name}": {"median": ns, "low": ns, "high": ns} for name, ns in stages.items()}
    criterion["signature/rs256"] = {"median": 22_500, "low": 22_000, "high": 23_000}
    memory = {"job_board_ready": 12.0, "job_board_after_warm": 13.0, "job_board_after_rs256_cold": 40.0,
              "job_board_after_es256_cold": 30.0, "policies": 10_000, "mesh_ready": 25.0, "mesh_after_tokens": 57.0,
              "cached_tokens": 99_000, "start_to_listening_secs": 1.5}
    for r, entries in enumerate((10_000, 9_984, 10_000), start=1):
        memory.update({bench.round_key("flood_ready", r): 12.0, bench.round_key("flood_after_bad_reused", r): 12.5,
                       bench.round_key("flood_after_bad_distinct", r): 15.0 + r,
                       bench.round_key("flood_after_unknown_key", r): 15.5 + r,
                       bench.round_key("flood_rejected_entries", r): entries})
    tokens = {alg: {"file": "", "tokens": 100_000, "bytes": 140_000_000, "signed_per_sec": 4000} for alg in ("rs256", "es256")}
    return {"smoke": False, "command": "make bench", "seconds": 900, "facts": {"cpu": "test"}, "fixtures": {"tokens": tokens},
            "quiet": {"warm": 0.0}, "memory": memory, "runs": runs, "criterion": criterion, "policy_rounds": [],
            "profile": {"skipped": "`perf` is not installed"}, "compare": fake_comparison()}


def test_a_full_run_renders_the_ceiling_both_weights_the_rounds_and_the_cold_stages():
    text = bench.Report(full_raw(), bench.FULL).render()
    assert "Warm tokens, heavy requests (2,000 bytes): (b) throughput ≥ 85% of (a)" in text
    assert "Warm tokens, light requests" in text
    assert "b/a median 0.95 (min 0.92, max 0.98; the rounds: 0.92, 0.93, 0.95, 0.97, 0.98)" in text
    assert "**met**: 5 of 5 rounds meet it" in text
    assert ("The ceiling at the same rate: p99 180 µs, p50 90 µs at 15,000 checks/s, 50.0 µs of server CPU a Check, "
            "the server core 99% busy. At a quarter of (b)'s rate: (b) p99 160 µs") in text
    assert "The multi-thread do-nothing server (a_mt)" in text
    assert "A target with rounds counts as met only when most of its rounds meet it" in text
    # Cold: (55 + r − 32) / 22.5 for r = 1..3 is 1.07, 1.11, 1.16, each under 1.2.
    assert "(c − b) / signature median 1.11×" in text and "**met**: 3 of 3 rounds meet it" in text
    assert "| **the stages' sum** | **28.3 µs** |" in text
    assert "the JSON of the header and of the claims the policy set reads (`read` − `decode`) | 1.5 µs" in text
    assert "## Profile of a cold run" in text and "Skipped: `perf` is not installed." in text
    assert "## The Istio in-proxy comparison (a report, not a target)" in text


def test_a_full_run_renders_the_floods_of_bad_tokens_against_a_warm_check_and_the_cache_s_bound():
    text = bench.Report(full_raw(), bench.FULL).render()
    # One bad token: 33, 36, 34 µs against (b)'s 32: 1.03, 1.12, 1.06×.
    assert "| A flood of one bad token: server CPU per Check ≤ 1.1× (b)'s (a lookup) | h/b median 1.06×" in text
    assert "**met**: 2 of 3 rounds meet it (the median round 3% below the 1.1× bound)" in text
    # Distinct bad signatures: (50, 56, 60 − 32) / 22.5 = 0.80, 1.07, 1.24: the median round misses.
    assert ("| A flood of distinct tokens with a bad signature: server CPU per Check ≤ (b)'s + 1× one RS256 "
            "signature | (h − b) / signature median 1.07× (min 0.80×, max 1.24×") in text
    assert "**missed**: 1 of 3 rounds meet it (the median round 7% over the 1× bound)" in text
    assert "| A flood of distinct tokens naming an unknown kid: server CPU per Check ≤ (b)'s + 1× one RS256" in text
    assert ("| A flood's memory: the rejected-token cache holds ≤ 10,000 tokens (its bound) | 10,000 entries at most "
            "(the rounds: 10,000, 9,984, 10,000); RSS 12.0 MiB ready, 16.0 MiB after the distinct bad signatures, "
            "16.5 MiB after the unknown kids | **met** (0% below the 10000 bound)") in text
    assert "| the same after 100,000 distinct bad signatures (10,000 rejections held) | 16.0 MiB |" in text
    assert "only `allow`, but (h), which expects only the 401 of a refused token" in text
    assert "| h_bad_distinct_3 (8.0 s) |" in text and "100 unauthenticated_401 |" in text


def test_a_flood_answered_otherwise_than_by_a_401_is_a_problem():
    raw = full_raw()
    flood = next(run_ for run_ in raw["runs"] if run_["key"] == "h_unknown_key")
    flood["report"]["outcomes"] = {bench.FLOOD_ANSWER: 90, "forbidden_403": 10}
    (problem,) = bench.Report(raw, bench.FULL).runs["h_unknown_key"].problems()
    assert problem.startswith("h_unknown_key: expected only `unauthenticated_401`, got {'forbidden_403': 10}")


def test_an_open_loop_the_server_fell_behind_is_a_finding_but_a_wrong_answer_in_it_is_a_problem():
    raw = full_raw()
    half = next(run_ for run_ in raw["runs"] if run_["key"] == "a_half")
    half["report"]["outcomes"] = {"allow": 90, "errors": 10}
    half["report"]["first_error"] = "over 20000 requests unanswered; stopped"
    run_ = bench.Report(raw, bench.FULL).runs["a_half"]
    assert run_.problems() == []
    assert ("a_half: the server fell behind the open loop: 10 requests failed (first: over 20000 requests "
            "unanswered; stopped).") in run_.observations()
    half["report"]["outcomes"] = {"allow": 90, "errors": 5, "forbidden_403": 5}
    (problem,) = bench.Report(raw, bench.FULL).runs["a_half"].problems()
    assert problem.startswith("a_half: expected only `allow`, got {'forbidden_403': 5}")


SMOKE_BINARIES = [bench.SMOKE.profile_dir / name for name in
                  ("portcullis", "examples/loadgen", "examples/bench_fixtures")]


@pytest.mark.skipif(not (all(path.exists() for path in SMOKE_BINARIES) and shutil.which("taskset")
                         and (os.cpu_count() or 0) >= 2),
                    reason="needs the debug builds `make bench-smoke` makes (portcullis, examples loadgen and "
                           "bench_fixtures), taskset and 2 cores")
def test_the_smoke_floods_run_and_every_bad_token_is_answered_401(tmp_path):
    fixtures = subprocess.run([str(SMOKE_BINARIES[2]), "--out", str(tmp_path), "--policies", "1",
                               "--rs256-tokens", "40", "--es256-tokens", "1"],
                              check=True, capture_output=True, text=True, timeout=120)
    smoke = bench.Bench(bench.SMOKE)
    smoke.fixtures = json.loads(fixtures.stdout)
    smoke.floods()
    keys = [f"h_{suffix}" for suffix in bench.FLOODS]
    assert [key for key in smoke.runs] == keys
    for key in keys:
        load_run = smoke.runs[key]
        assert load_run.expected == bench.FLOOD_ANSWER
        assert load_run.problems() == [], load_run.report
        assert load_run.report["outcomes"][bench.FLOOD_ANSWER] > 0
    assert smoke.runs["h_bad_reused"].report["tokens"] == "bad-reused"
    assert smoke.runs["h_bad_distinct"].report["requests_prebuilt"] == 40
    # 40 distinct bad signatures, all remembered; the reused one is the first of them.
    assert smoke.memory["flood_rejected_entries"] == 40
    raw = {"smoke": True, "command": "test", "seconds": 1, "facts": {}, "fixtures": smoke.fixtures,
           "quiet": smoke.quiet, "memory": smoke.memory, "runs": [vars(run_) for run_ in smoke.runs.values()],
           "criterion": {}}
    table = bench.Report(raw, bench.SMOKE).render()
    for suffix, (_, what) in bench.FLOODS.items():
        (row,) = [line for line in table.splitlines() if line.startswith(f"| (h) portcullis, job-board, {what} (")]
        assert row.endswith(" unauthenticated_401 |") and "allow" not in row, row
