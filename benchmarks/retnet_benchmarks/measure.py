"""Measuring helpers shared by the benchmarks: isolated worker processes, peak memory, bandwidth, timing.

Each benchmark case runs in a fresh Python process (``python -m retnet_benchmarks.worker``) so its peak
resident memory (``ru_maxrss`` / ``VmHWM``) belongs to that case alone and an out-of-memory kill ends only it.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import retnet
from retnet.cli.errors import CLIError

RESULT_MARKER = "RETNET_BENCH_RESULT "
GIB = 1024**3


def pick_device(name: str = "auto") -> torch.device:
    """The one device choice of the suite: ``auto`` is CUDA when present, else the CPU; ``cuda`` without a GPU
    is a user error (one line, exit code 2)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise CLIError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("this benchmark needs a CUDA GPU and none is available (torch.cuda.is_available() is False)")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def status_bytes(field: str, pid: int | None = None) -> int | None:
    """A memory field of ``/proc/PID/status`` (``VmRSS`` now, ``VmHWM`` peak) in bytes, for this process by
    default; None where /proc has no such file (not Linux)."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        if pid is not None and os.path.isdir("/proc/self"):
            raise  # Linux, but that process is gone
    return None


def _foreign(field: str, pid: int) -> int:
    value = status_bytes(field, pid)
    if value is None:
        raise RuntimeError(f"/proc/{pid}/status has no {field} (the RSS of another process needs Linux)")
    return value


def current_rss(pid: int | None = None) -> int:
    """Resident memory now, in bytes, of this process (or of process ``pid``)."""
    if pid is not None:
        return _foreign("VmRSS", pid)
    value = status_bytes("VmRSS")
    return value if value is not None else peak_rss()


def peak_rss(pid: int | None = None) -> int:
    """Peak resident memory (since start or the last reset), in bytes, of this process (or of process ``pid``)."""
    if pid is not None:
        return _foreign("VmHWM", pid)
    value = status_bytes("VmHWM")
    if value is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024
    return value


def reset_peak_rss(pid: int | None = None) -> bool:
    """Start a new RSS peak (``VmHWM`` back to the current RSS: Linux's ``/proc/PID/clear_refs``); False where
    it cannot be reset (then the peak covers the whole process)."""
    try:
        with open(f"/proc/{pid or 'self'}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak: CUDA's allocator stats, or the process's RSS peak (:func:`reset_peak_rss`).

    Returns False where the CPU peak cannot be reset (then the peak covers the whole process).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def peak_memory(device: torch.device) -> int:
    """Peak bytes: ``torch.cuda.max_memory_allocated`` on GPU, peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss()


def median_time(times: list[float]) -> float:
    """The middle of the sorted times (the upper one of two for an even count): a time that was measured."""
    return sorted(times)[len(times) // 2]


PROBE_ROWS = 1024
"""The bandwidth probe's one-row product reads its tensor as a ``[PROBE_ROWS, n]`` matrix (input-major, the
layout the decode step's BLAS products read)."""


def time_against_bandwidth(
    step: Callable[[], None], device: torch.device, steps: int, nbytes: int = 512 * 1024**2
) -> tuple[list[float], float]:
    """``steps`` step times and the read bandwidth (bytes/s) measured interleaved, so that the two see the same
    machine (on a shared machine the bandwidth a core gets drifts within seconds): each round runs the step
    twice, times the second (the first brings the caches back to where a run of steps keeps them, after the
    probes swept them), then times two reads of an ``nbytes`` float32 tensor: its sum, and a one-row product
    ``ones[1, PROBE_ROWS] @ x[PROBE_ROWS, n]``. The bandwidth is the faster read's median (which read streams
    faster depends on the CPU: a sum on some, the BLAS's product on others), so that the floor is never
    computed from a slower read than one the step itself could use."""
    x = torch.ones(nbytes // 4, device=device)
    matrix = x[: (x.numel() // PROBE_ROWS) * PROBE_ROWS].view(PROBE_ROWS, -1)
    row = torch.ones(1, PROBE_ROWS, device=device)
    reads = {"sum": (x.sum, x.numel() * 4), "product": (lambda: row @ matrix, matrix.numel() * 4)}
    for read, _ in reads.values():
        read()
    times: list[float] = []
    rates: dict[str, list[float]] = {name: [] for name in reads}
    for _ in range(steps):
        step()
        synchronize(device)
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        for name, (read, size) in reads.items():
            t1 = time.perf_counter()
            read()
            synchronize(device)
            rates[name].append(size / (time.perf_counter() - t1))
    return times, max(statistics.median(r) for r in rates.values())


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def child_env() -> dict[str, str]:
    """This process's environment, with ``PYTHONPATH`` leading to the ``retnet`` and ``retnet_benchmarks`` it
    imported, so that a child process (a case, a server) runs the same code even from an uninstalled checkout."""
    env = dict(os.environ)
    roots = [str(Path(m.__file__).resolve().parents[1]) for m in (sys.modules[__package__], retnet)]
    env["PYTHONPATH"] = os.pathsep.join([*dict.fromkeys(roots), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_isolated(
    target: str,
    kwargs: dict[str, Any],
    timeout_s: float | None,
    *,
    threads: int | None = None,
    baseline_rss: bool = False,
    malloc: str = "retain",
) -> dict[str, Any]:
    """Run ``module:function(**kwargs)`` in a fresh process; its dict result, or ``{"error": reason}``.

    The result also holds ``process_peak_rss`` (the process's peak RSS, bytes). ``threads``: the child's
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and ``torch.set_num_threads``. ``baseline_rss``: also return the
    child's RSS right after importing the target module (``baseline_rss``, bytes), so callers can report the peak above
    it. ``malloc``: the child's glibc setting (:func:`retnet.runtime.malloc.configure`). ``timeout_s`` None waits as
    long as the case runs. An out-of-memory kill, a crash, an exception or the timeout becomes an ``error`` row,
    never a crash of the benchmark.
    """
    env = child_env()
    cmd = [sys.executable, "-m", "retnet_benchmarks.worker"]
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        cmd += ["--threads", str(threads)]
    if baseline_rss:
        cmd.append("--baseline-rss")
    cmd += ["--malloc", malloc, target, json.dumps(kwargs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    if proc.returncode in (-9, 137):
        return {"error": "killed (out of memory?)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    if "out of memory" in proc.stderr.lower() or "can't allocate memory" in proc.stderr.lower():
        return {"error": f"out of memory: {tail[:200]}"}
    return {"error": f"exit code {proc.returncode}: {tail[:300]}"}


def run_case(
    args: Any,
    target: str,
    kwargs: dict[str, Any],
    timeout_s: float | None,
    *,
    threads: int | None = None,
    baseline_rss: bool = False,
) -> dict[str, Any]:
    """:func:`run_isolated` (with ``args.malloc`` where the benchmark has that flag), or a direct call when
    ``args.in_process`` (toy smoke runs; ``threads`` then sets this process's torch threads, and there is no
    ``baseline_rss``)."""
    if not getattr(args, "in_process", False):
        malloc = getattr(args, "malloc", "retain")
        return run_isolated(target, kwargs, timeout_s, threads=threads, baseline_rss=baseline_rss, malloc=malloc)
    module, func = target.split(":")
    import importlib

    if threads is not None:
        torch.set_num_threads(threads)
    return dict(getattr(importlib.import_module(module), func)(**kwargs))


def check_model_minutes(minutes: float, started: float, step: int, steps: int) -> None:
    """``--model-minutes``: raise once a model has trained longer than ``minutes`` since ``started``
    (``time.perf_counter()``; 0: no limit), naming the steps it reached, so its row is an error, not a
    half-trained model's figures."""
    if minutes and time.perf_counter() - started > 60 * minutes:
        raise TimeoutError(f"stopped after {step} of {steps} steps: over --model-minutes {minutes:g}")


class TimeBudget:
    """``--max-minutes``: once a benchmark has run this long, its remaining cases are recorded as skipped
    (with this reason) instead of run, so a long grid still ends with a report. 0 means no limit."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.started = time.monotonic()

    @staticmethod
    def add_argument(parser: Any) -> None:
        parser.add_argument(
            "--max-minutes", type=float, default=0.0, help="skip remaining cases after this long (0: no limit)"
        )

    def exhausted(self) -> str | None:
        """The skip reason once the budget is spent, else None."""
        if self.minutes and time.monotonic() - self.started > self.minutes * 60:
            return f"skipped: --max-minutes {self.minutes:g} reached"
        return None
