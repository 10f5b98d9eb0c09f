"""Run one benchmark case in a fresh process, so its peak memory is its own.

``run_isolated("pkg.module:function", **kwargs)`` starts a spawned Python process, records its resident
memory after imports, calls the function, and returns the function's result dict plus ``peak_rss_mb``
(the process's peak RSS) and ``peak_rss_delta_mb`` (peak minus the baseline after imports).
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import resource
import sys
import traceback
from typing import Any


def _rss_mb_now() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _child(target: str, kwargs: dict[str, Any], queue) -> None:
    try:
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        import torch

        torch.set_num_threads(kwargs.pop("threads", torch.get_num_threads()))
        base = _rss_mb_now()
        result = dict(fn(**kwargs))
        peak = _peak_rss_mb()
        result.update(peak_rss_mb=peak, peak_rss_delta_mb=peak - base)
        queue.put(("ok", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))


def run_isolated(target: str, timeout: float = 3600, **kwargs: Any) -> dict[str, Any]:
    """Call ``target`` (``"module:function"``) with ``kwargs`` in a fresh process; see the module docstring."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, kwargs, queue))
    proc.start()
    try:
        status, payload = queue.get(timeout=timeout)
    except Exception as exc:  # queue.Empty or a dead child
        proc.kill()
        raise RuntimeError(f"benchmark case {target} {kwargs} produced no result (exit code {proc.exitcode})") from exc
    finally:
        proc.join(timeout=10)
    if status != "ok":
        raise RuntimeError(f"benchmark case {target} {kwargs} failed: {payload}")
    return payload
