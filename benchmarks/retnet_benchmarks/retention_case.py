"""One retention benchmark case, meant to run in a fresh process: time and peak memory of one (mode, T).

``retnet bench retention`` runs :func:`run_case` through :func:`retnet_benchmarks.measure.run_case`.
A fresh process per case keeps peak memory honest: peak RSS is a high-water mark of the whole process,
so a case can only be measured against a baseline taken after its own setup, never after another case.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from retnet.ops import official_log_decay, retention
from retnet_benchmarks.measure import peak_rss

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _inputs(spec: dict[str, Any], T: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    B, H, Dk, Dv = spec["batch"], spec["heads"], spec["dk"], spec["dv"]
    dtype = DTYPES[spec["dtype"]]
    grad = spec["backward"]
    q = torch.randn(B, T, H, Dk, generator=gen).to(dtype).requires_grad_(grad)
    k = (torch.randn(B, T, H, Dk, generator=gen) * Dk**-0.5).to(dtype).requires_grad_(grad)
    v = torch.randn(B, T, H, Dv, generator=gen).to(dtype).requires_grad_(grad)
    grad_out = torch.randn(B, T, H, Dv, generator=gen).to(dtype)
    return q, k, v, official_log_decay(H), grad_out


def _step(spec: dict[str, Any], q, k, v, g, grad_out) -> None:
    """One forward (+ backward) pass; gradients are dropped so every pass allocates alike."""
    if spec["backward"]:
        o, _ = retention(q, k, v, g, mode=spec["mode"], chunk_size=spec["chunk_size"])
        o.backward(grad_out)
        q.grad = k.grad = v.grad = None
    else:
        with torch.no_grad():
            retention(q, k, v, g, mode=spec["mode"], chunk_size=spec["chunk_size"])


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then time ``repeats`` passes; report median/min wall time, CPU time and peak RSS increase.

    Setup (inputs plus one toy-size pass that initialises the kernels and autograd engine) happens before the
    memory baseline, so the reported increase is what the pass at length ``T`` itself needs.
    """
    torch.set_num_threads(spec["threads"])
    T = spec["T"]
    _step(spec, *_inputs(spec, min(T, 2 * spec["chunk_size"])))  # toy pass: one-time library initialisation
    tensors = _inputs(spec, T)
    baseline = peak_rss()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    _step(spec, *tensors)  # warm-up at full size
    warm_s = time.perf_counter() - t0
    repeats = spec["repeats"]
    if spec.get("max_seconds") and warm_s * repeats > spec["max_seconds"]:
        repeats = max(1, int(spec["max_seconds"] // max(warm_s, 1e-9)))
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        _step(spec, *tensors)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "time_ms": 1000 * statistics.median(wall),
        "time_ms_min": 1000 * min(wall),
        "cpu_ms": 1000 * statistics.median(cpu),
        "warmup_ms": 1000 * warm_s,
        "repeats": repeats,
        "peak_bytes": max(0, peak_rss() - baseline),
        "baseline_rss_bytes": baseline,
        "load_avg": round((load_before + os.getloadavg()[0]) / 2, 2),
    }
