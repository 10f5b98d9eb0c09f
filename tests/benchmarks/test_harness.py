"""``harness.run_cases``: one row per case, in order; skips, the time budget and failures become error rows."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from retnet_benchmarks.harness import Case, keyed_row, run_cases
from retnet_benchmarks.measure import TimeBudget

HERE = Path(__file__).resolve().parent


def square(x: int) -> dict:
    """Run as a case: a result that repeats one key field with another value (the key must win)."""
    if x < 0:
        raise ValueError(f"negative x {x}")
    return {"x": "from the result", "square": x * x, "pid": os.getpid()}


def pause(x: int, seconds: float) -> dict:
    """Run as a case: sleep, and say when it started and ended."""
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}


def _progress(row: dict) -> str:
    return f"case {row['x']}: {row.get('error', row.get('square'))}"


def test_isolated_cases_make_keyed_rows_in_order_with_errors(monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(HERE))  # the child imports this file as ``test_harness``
    cases = [Case({"x": 3}, {"x": 3}), Case({"x": 5}, {"x": 5}, skip="skipped: too big"), Case({"x": -1}, {"x": -1})]
    rows = run_cases(argparse.Namespace(), "test_harness:square", cases, progress=_progress, timeout_s=120, threads=1)
    assert [r["x"] for r in rows] == [3, 5, -1]
    assert rows[0]["square"] == 9 and rows[0]["pid"] != os.getpid()  # a fresh process
    assert rows[0]["process_peak_rss"] > 0
    assert list(rows[1]) == ["x", "error"] and rows[1]["error"] == "skipped: too big"
    assert rows[2]["error"].startswith("exit code 1") and "negative x -1" in rows[2]["error"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "case 3: 9" and printed[1] == "case 5: skipped: too big"
    assert printed[2].startswith("case -1: exit code 1")


def test_workers_run_cases_at_once_and_keep_their_order(monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    cases = [Case({"x": 1}, {"x": 1, "seconds": 3.0}), Case({"x": 2}, {"x": 2, "seconds": 0.0})]
    rows = run_cases(
        argparse.Namespace(), "test_harness:pause", cases, progress=lambda r: f"case {r['x']}", timeout_s=120, workers=2
    )
    assert [r["x"] for r in rows] == [1, 2]  # the cases' order, not the order they ended in
    assert rows[1]["start"] < rows[0]["end"] and rows[1]["end"] < rows[0]["end"]  # the second ran meanwhile
    assert capsys.readouterr().out.split("\n")[:2] == ["case 2", "case 1"]  # progress as each ends


def test_exhausted_budget_skips_the_rest_in_process_with_a_custom_row(capsys):
    calls = []

    def to_row(case: Case, result: dict) -> dict:
        calls.append(case.key["x"])
        return {"n": case.key["x"], **result}

    args = argparse.Namespace(in_process=True)
    cases = [Case({"x": x}, {"x": x}) for x in (2, 4)]
    budget = TimeBudget(1e-9)
    rows = run_cases(
        args,
        "retnet_benchmarks.harness:keyed_row",  # any importable target: it is never called here
        cases,
        progress=lambda row: f"n={row['n']}",
        timeout_s=None,
        budget=budget,
        to_row=to_row,
    )
    assert rows == [{"n": x, "error": "skipped: --max-minutes 1e-09 reached"} for x in (2, 4)]
    assert calls == [2, 4] and capsys.readouterr().out.split() == ["n=2", "n=4"]


def test_in_process_case_calls_the_target_directly():
    args = argparse.Namespace(in_process=True)
    rows = run_cases(
        args,
        "tests.benchmarks.test_harness:square",
        [Case({"x": 6}, {"x": 6})],
        progress=str,
        timeout_s=None,
        budget=TimeBudget(0),
    )
    assert rows == [{"x": 6, "square": 36, "pid": os.getpid()}]


def test_keyed_row_puts_the_key_first_and_lets_it_win():
    row = keyed_row(Case({"model": "a", "batch": 1}), {"batch": 9, "ms": 2.0})
    assert row == {"model": "a", "batch": 1, "ms": 2.0} and list(row) == ["model", "batch", "ms"]
