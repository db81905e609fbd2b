"""The arithmetic of bench/run.py: which round is the median, which runs pair up, what a verdict says."""

from __future__ import annotations

import importlib.util
import math
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
