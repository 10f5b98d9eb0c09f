"""Smoke tests of ``retnet bench recall`` and ``retnet bench variant-memory`` (toy sizes, report schema)."""

from __future__ import annotations

import json

import pytest
import torch

from retnet.cli.main import main
from retnet_benchmarks.mqar import MQARTask, recall_accuracy


def test_mqar_batches_pair_every_query_with_its_value():
    task = MQARTask(key_vocab=16, value_vocab=16)
    ids, labels = task.batch(3, 24, torch.Generator().manual_seed(0))
    n = 6
    for row, lab in zip(ids.tolist(), labels.tolist()):
        pairs = dict(zip(row[0 : 2 * n : 2], row[1 : 2 * n : 2]))
        assert len(pairs) == n and all(1 <= k <= 16 < v <= 32 for k, v in pairs.items())
        queries = row[2 * n :: 2]
        assert sorted(queries) == sorted(pairs)
        scored = [(t, v) for t, v in enumerate(lab) if v != -100]
        assert [v for _, v in scored] == [pairs[q] for q in queries]
        assert all(row[t] == v and row[t - 1] in pairs for t, v in scored)
    perfect = torch.nn.functional.one_hot(ids[:, 1:], task.vocab_size).float()
    perfect = torch.cat([perfect, torch.zeros(3, 1, task.vocab_size)], 1)
    assert recall_accuracy(perfect, labels) == (3 * n, 3 * n)
    with pytest.raises(ValueError, match="needs 16 distinct keys"):
        MQARTask(key_vocab=8).batch(1, 64, torch.Generator())


def test_recall_bench_quick_writes_report(tmp_path, monkeypatch):
    """Variants and peers (from the registry, matched in size) go through one loop; a model that fails gets an
    ``error`` row while the others still report."""
    from retnet_benchmarks import bench_recall
    from retnet_benchmarks.peers import REFERENCE_PATH_NOTE

    real = bench_recall.train_and_eval

    def failing_yoco(name, args, task):
        if name == "yoco":
            raise RuntimeError("no backward at this length")
        return real(name, args, task)

    monkeypatch.setattr(bench_recall, "train_and_eval", failing_yoco)
    args = [
        "bench",
        "recall",
        "--quick",
        "--steps",
        "2",
        "--threads",
        "1",
        "--workers",
        "1",
        "--in-process",
        "--out-dir",
        str(tmp_path),
    ]
    models = ["retnet", "hybrid", "yoco", "llama", "mamba", "mamba2", "rwkv"]
    assert main([*args[:3], "--models", ",".join(reversed(models)), *args[3:]]) == 0
    data = json.loads((tmp_path / "recall.json").read_text())
    assert [r["model"] for r in data["rows"]] == models  # the report's order, not the run order
    rows = {r["model"]: r for r in data["rows"]}
    assert rows.pop("yoco") == {"model": "yoco", "error": "RuntimeError: no backward at this length"}
    for r in rows.values():
        assert "error" not in r and 0 <= r["acc@16"] <= 1 and 0 <= r["acc@32"] <= 1 and r["parameters"] > 0
        assert r["final_loss"] > 0
    # the baselines are sized to RetNet's parameter count by the registry (within 2%)
    for name in ("llama", "mamba", "mamba2", "rwkv"):
        assert abs(rows[name]["parameters"] / rows["retnet"]["parameters"] - 1) < 0.02, name
    summary = data["summary"]
    for name in ("retnet", "mamba", "mamba2", "rwkv"):
        assert summary[f"{name}_acc@32"] == rows[name]["acc@32"]
    assert summary["best at length 32"].split()[0] in rows
    md = (tmp_path / "recall.md").read_text()
    assert REFERENCE_PATH_NOTE in md and "no backward at this length" in md
    assert (tmp_path / "recall.png").exists()
    assert main(["bench", "recall", "--quick", "--models", "s4", "--no-write"]) == 2
    assert [step for step, _ in rows["retnet"]["loss_curve"]] == [1, 2]  # the loss curve, in the JSON
    # a model still training after --model-minutes becomes an error row; --max-minutes skips the models left
    assert main([*args, "--models", "rwkv", "--model-minutes", "1e-9"]) == 0
    (row,) = json.loads((tmp_path / "recall.json").read_text())["rows"]
    assert row == {"model": "rwkv", "error": "TimeoutError: stopped after 0 of 2 steps: over --model-minutes 1e-09"}
    assert main([*args, "--models", "rwkv", "--max-minutes", "1e-9"]) == 0
    (row,) = json.loads((tmp_path / "recall.json").read_text())["rows"]
    assert row == {"model": "rwkv", "error": "skipped: --max-minutes 1e-09 reached"}


def test_recall_bench_trains_models_in_worker_processes(tmp_path):
    """--workers 2: the models train in two worker processes (the options must reach them)."""
    args = ["bench", "recall", "--quick", "--steps", "1", "--threads", "2", "--workers", "2", "--models", "rwkv,retnet"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "recall.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["retnet", "rwkv"] and all("error" not in r for r in rows)
    assert all(r["process_peak_rss"] > 0 and len(r["loss_curve"]) == 1 for r in rows)  # from the workers


def test_variant_memory_formula_matches_real_prefills(tmp_path):
    args = ["bench", "variant-memory", "--contexts", "16,32", "--measure", "16", "--threads", "1", "--shape", "tiny"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "variant_memory.json").read_text())
    assert data["summary"]["formula equals measured bytes"] is True
    slope = {r["model"]: r["marginal_bytes_per_token"] for r in data["rows"]}
    assert slope["retnet"] == slope["gated"] == 0
    assert 0 < slope["yoco"] <= slope["hybrid"] < slope["llama"]
