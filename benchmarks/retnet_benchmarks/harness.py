"""The one case loop of the benchmarks: cases -> one isolated run each -> rows, with a progress line per case.

A benchmark declares its cases (what names each one, the target's keyword arguments, or a reason not to run
it) and how a row is printed; :func:`run_cases` runs them in order (or ``workers`` at a time), each in a fresh
process (:func:`retnet_benchmarks.measure.run_case`), stops starting them once the ``--max-minutes`` budget is
spent, and turns every failure (timeout, out-of-memory kill, exception) into a row with an ``error``, so a long
grid always ends with its rows for the summary and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from retnet_benchmarks.measure import TimeBudget, run_case


@dataclass(frozen=True)
class Case:
    """One measurement. ``key``: the fields that name it, copied onto its row (and winning over the result's);
    ``kwargs``: the target's keyword arguments; ``skip``: a reason not to run it (then its row's ``error``)."""

    key: dict[str, Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None


def keyed_row(case: Case, result: dict[str, Any]) -> dict[str, Any]:
    """The default row: the case's key first, then the result (an ``error`` or the measurements)."""
    return {**case.key, **result, **case.key}


def run_cases(
    args: Any,
    target: str,
    cases: Iterable[Case],
    *,
    progress: Callable[[dict[str, Any]], str | None],
    timeout_s: float | None,
    budget: TimeBudget | None = None,
    threads: int | None = None,
    baseline_rss: bool = False,
    to_row: Callable[[Case, dict[str, Any]], dict[str, Any]] = keyed_row,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Run ``target`` (``module:function``) once per case; one row per case, in the cases' order.

    A case with ``skip`` is not run, nor are the cases not yet started once ``budget`` is exhausted: their
    result is ``{"error": reason}``. The others run through :func:`run_case` (a fresh process unless
    ``args.in_process``; ``timeout_s``, ``threads``, ``baseline_rss`` as there), whose failures are also
    ``{"error": ...}``. ``workers`` > 1 runs that many cases at once (each its own process, ``threads`` torch
    threads each; in-process runs stay one at a time), which suits long independent cases such as training
    one model each, not timings that must not share the machine. ``to_row(case, result)`` makes the row
    (default :func:`keyed_row`); ``progress(row)`` is printed as each row is made (unless None).
    """

    def one(case: Case) -> dict[str, Any]:
        if case.skip:
            result: dict[str, Any] = {"error": case.skip}
        elif budget is not None and (over := budget.exhausted()):
            result = {"error": over}
        else:
            result = run_case(args, target, case.kwargs, timeout_s, threads=threads, baseline_rss=baseline_rss)
        row = to_row(case, result)
        if (line := progress(row)) is not None:
            print(line, flush=True)
        return row

    cases = list(cases)
    if workers <= 1 or getattr(args, "in_process", False):
        return [one(case) for case in cases]
    # threads only wait on the worker processes; ``map`` keeps the cases' order
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, cases))
