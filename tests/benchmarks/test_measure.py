"""``measure.run_isolated``'s options: threads reach the child, the post-import RSS baseline, failures as rows;
steps timed interleaved with bandwidth probes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from retnet_benchmarks.measure import run_isolated, time_against_bandwidth

HERE = Path(__file__).resolve().parent


def report_threads() -> dict:
    """Run in the child: what it sees of its thread settings."""
    return {
        "torch_threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "mkl": os.environ.get("MKL_NUM_THREADS"),
    }


def allocate(mib: int) -> dict:
    """Run in the child: touch ``mib`` MiB, so the peak lies that far above the baseline."""
    x = torch.ones(mib * 2**18)
    return {"sum": float(x.sum())}


def fail(message: str) -> dict:
    raise ValueError(message)


def _run(monkeypatch, func: str, kwargs: dict, **options) -> dict:
    monkeypatch.setenv("PYTHONPATH", str(HERE))  # the child imports this file as ``test_measure``
    return run_isolated(f"test_measure:{func}", kwargs, timeout_s=120, **options)


def test_threads_reach_the_child(monkeypatch):
    res = _run(monkeypatch, "report_threads", {}, threads=1)
    assert (res["torch_threads"], res["omp"], res["mkl"]) == (1, "1", "1"), res
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    res = _run(monkeypatch, "report_threads", {})  # without threads: the environment is left alone
    assert res["omp"] is None and res["mkl"] is None


def test_baseline_rss_only_when_asked_and_below_the_peak(monkeypatch):
    res = _run(monkeypatch, "allocate", {"mib": 64}, baseline_rss=True)
    assert 10 * 2**20 < res["baseline_rss"]
    assert res["process_peak_rss"] - res["baseline_rss"] >= 60 * 2**20
    assert "baseline_rss" not in _run(monkeypatch, "allocate", {"mib": 1})


def test_failing_target_is_an_error_naming_the_exception(monkeypatch):
    res = _run(monkeypatch, "fail", {"message": "bad case 42"}, threads=1)
    assert set(res) == {"error"}
    assert res["error"].startswith("exit code 1") and "ValueError: bad case 42" in res["error"]


def test_steps_and_bandwidth_probes_alternate(monkeypatch):
    """Each round: an untimed step, a timed step, two probes (a sum of the probe tensor, a one-row product
    over it); the step times exclude the probes; the bandwidth is the faster probe's."""
    calls = []
    real_sum, real_matmul = torch.Tensor.sum, torch.Tensor.__matmul__

    def spy_sum(self, *args, **kwargs):
        calls.append("sum")
        return real_sum(self, *args, **kwargs)

    def slow_matmul(self, other):  # a product that reads at a crawl: the sum's rate must win
        calls.append("product")
        time.sleep(0.05)
        return real_matmul(self, other)

    def step():
        calls.append("step")
        time.sleep(0.02)

    monkeypatch.setattr(torch.Tensor, "sum", spy_sum)
    monkeypatch.setattr(torch.Tensor, "__matmul__", slow_matmul)
    times, bandwidth = time_against_bandwidth(step, torch.device("cpu"), 3, nbytes=4 * 1024**2)
    monkeypatch.undo()
    assert calls == ["sum", "product"] + ["step", "step", "sum", "product"] * 3  # warm-up reads, then rounds
    assert len(times) == 3 and all(0.02 <= t < 0.5 for t in times)
    assert bandwidth > 4 * 1024**2 / 0.02  # the sum's rate: a 4 MiB sum takes far less than the product's sleep


def test_bandwidth_is_the_faster_probes(monkeypatch):
    """A sum slower than the product leaves the product's rate as the bandwidth."""
    real_sum = torch.Tensor.sum

    def slow_sum(self, *args, **kwargs):
        time.sleep(0.05)
        return real_sum(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "sum", slow_sum)
    _, bandwidth = time_against_bandwidth(lambda: None, torch.device("cpu"), 3, nbytes=4 * 1024**2)
    monkeypatch.undo()
    assert bandwidth > 4 * 1024**2 / 0.05
