"""Toy-size smoke runs of each benchmark: the outputs' files and schema, equal parameter counts."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from retnet.cli.main import main
from retnet_benchmarks.measure import run_isolated
from retnet_benchmarks.peers import REFERENCE_PATH_NOTE

MACHINE_KEYS = {"platform", "processor", "cpu_count", "torch", "device"}


def _main(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["retnet", *argv])  # the report records the command line
    return main(argv)


def _load(tmp_path, name):
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert {"name", "title", "command", "machine", "date", "summary", "rows"} <= set(data)
    assert data["command"].startswith("retnet bench " + name)
    assert MACHINE_KEYS <= set(data["machine"])
    assert "transformers" in data["machine"]
    md = (tmp_path / f"{name}.md").read_text()
    assert data["command"] in md and f"{name}.png" in md
    return data


def _assert_equal_size(data):
    s = data["summary"]
    assert abs(s["llama_params"] - s["retnet_params"]) / s["retnet_params"] < 0.05
    params = {r["model"]: r["params"] for r in data["rows"] if "params" in r}
    assert {"retnet", "llama"} <= set(params)
    for model, n in params.items():
        assert abs(n - params["retnet"]) / params["retnet"] < 0.05, model


def _tiny_decode(tmp_path, *extra: str) -> list[str]:
    """``retnet bench decode`` on the toy grid: batch 1 at 16 and 64 tokens, batch 2 at 16, one thread."""
    argv = [
        "bench",
        "decode",
        "--tiny",
        "--in-process",
        "--contexts",
        "16,64",
        "--batch8-contexts",
        "16",
        "--paths",
        "none",
    ]
    return argv + ["--large-batch", "2", "--threads", "1", "--out-dir", str(tmp_path), *extra]


def _tiny_train(tmp_path, *extra: str) -> list[str]:
    """``retnet bench train`` on the toy model at 32 and 64 tokens, one step, one thread."""
    argv = ["bench", "train", "--tiny", "--in-process", "--lengths", "32,64", "--steps", "1", "--warmup-len", "16"]
    return argv + ["--threads", "1", "--out-dir", str(tmp_path), *extra]


def test_decode_smoke(tmp_path, monkeypatch):
    argv = _tiny_decode(tmp_path, "--prefill-max", "32", "--prefill-block", "8", "--warmup", "1", "--steps", "2")
    argv += ["--memory-budget-gib", "0.00004", "--models", "retnet", "llama"]
    assert _main(monkeypatch, argv) == 0
    data = _load(tmp_path, "decode")
    rows = data["rows"]
    assert len(rows) == 6
    ran = [r for r in rows if "error" not in r]
    # a 42 KB budget skips Llama at 64 tokens (its cache: 64 KiB) and reports why
    skipped = [r for r in rows if "error" in r]
    assert [(r["batch"], r["context"]) for r in skipped] == [(1, 64)]
    assert all(r["model"] == "llama" and "KV cache would need" in r["error"] for r in skipped)
    for r in ran:
        assert r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["memory_mib"] > 0 and r["floor_ms"] > 0
        assert r["context_fill"] == ("prefill" if r["context"] <= 32 else "synthetic")
        assert abs(r["tokens_per_s"] - r["batch"] * 1e3 / r["step_ms"]) < 1e-6 * r["tokens_per_s"]
    retnet = [r for r in ran if r["model"] == "retnet"]
    assert len({round(r["state_or_cache_mib"] / r["batch"], 9) for r in retnet}) == 1  # fixed-size state
    # the step split: its weight products alone, timed at batch 1 (batch 2 is below the packing threshold too)
    assert all(r["products_ms"] > 0 and r["step_over_products"] > 0 for r in retnet)
    assert all("products_ms" not in r for r in ran if r["model"] == "llama")
    assert data["summary"]["retnet_b1_step_over_products_max"] > 0
    assert "llama_not_run" in data["summary"]
    _assert_equal_size(data)


def test_decode_llama_cache_grows_with_context(tmp_path, monkeypatch):
    argv = _tiny_decode(tmp_path, "--prefill-max", "16", "--warmup", "0", "--steps", "1", "--models", "retnet", "llama")
    assert _main(monkeypatch, argv) == 0
    data = json.loads((tmp_path / "decode.json").read_text())
    cache = {(r["batch"], r["context"]): r["state_or_cache_mib"] for r in data["rows"] if r["model"] == "llama"}
    assert cache[(1, 64)] == 4 * cache[(1, 16)] and cache[(2, 16)] == 2 * cache[(1, 16)]
    assert any(k.startswith("throughput_ratio") for k in data["summary"]) is False


def test_decode_variants_fill_kv_caches_at_the_context(tmp_path, monkeypatch):
    """Hybrid and YOCO: real prefill at 16 tokens, synthetic KV caches at 64; the cache part scales with context."""
    argv = _tiny_decode(tmp_path, "--prefill-max", "16", "--prefill-block", "8", "--warmup", "0", "--steps", "1")
    argv += ["--models", "gated", "hybrid", "yoco", "--name", "dv"]
    assert _main(monkeypatch, argv) == 0
    data = json.loads((tmp_path / "dv.json").read_text())
    rows = {(r["model"], r["batch"], r["context"]): r for r in data["rows"]}
    assert len(rows) == 9 and all("error" not in r for r in rows.values())
    assert rows[("hybrid", 1, 16)]["context_fill"] == "prefill" and rows[("yoco", 1, 64)]["context_fill"] == "synthetic"
    from retnet.models import RetNetConfig
    from retnet_benchmarks.baseline import variant_config

    base = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=2, value_dim=96, ffn_dim=96)
    for model in ("gated", "hybrid", "yoco"):
        cfg = RetNetConfig(**variant_config(model, base))
        for batch, context in ((1, 16), (1, 64), (2, 16)):
            expected = cfg.state_nbytes(context, batch_size=batch) / 1024**2
            assert abs(rows[(model, batch, context)]["state_or_cache_mib"] - expected) < 1e-9, (model, batch, context)
        assert abs(data["summary"][f"{model}_params"] - data["summary"]["retnet_params"]) < 0.05 * 123200
    # the fixed-size gated state does not grow; the KV caches do
    assert rows[("gated", 1, 64)]["state_or_cache_mib"] == rows[("gated", 1, 16)]["state_or_cache_mib"]
    for model in ("hybrid", "yoco"):
        assert rows[(model, 1, 64)]["state_or_cache_mib"] > rows[(model, 1, 16)]["state_or_cache_mib"]


def test_train_smoke(tmp_path, monkeypatch):
    assert _main(monkeypatch, _tiny_train(tmp_path)) == 0
    data = _load(tmp_path, "train")
    rows = data["rows"]
    assert {(r["model"], r["mode"]) for r in rows} == {
        ("retnet", "parallel"),
        ("retnet", "chunkwise"),
        ("llama", "sdpa"),
    }
    assert all("error" not in r and r["tokens_per_s"] > 0 and r["memory_mib"] > 0 for r in rows)
    assert "chunkwise_over_llama_tokens_per_s_64" in data["summary"]
    _assert_equal_size(data)


def test_train_smoke_with_and_without_checkpointing(tmp_path, monkeypatch):
    argv = _tiny_train(tmp_path, "--modes", "chunkwise,sdpa", "--checkpointing", "both")
    assert _main(monkeypatch, argv) == 0
    data = _load(tmp_path, "train")
    cases = {(r["model"], r["mode"], r["checkpointing"], r["seq_len"]) for r in data["rows"]}
    assert cases == {
        (m, f, c, T) for m, f in (("retnet", "chunkwise"), ("llama", "sdpa")) for c in (0, 1) for T in (32, 64)
    }
    assert all("error" not in r for r in data["rows"])
    assert "chunkwise_over_llama_memory_64_checkpointed" in data["summary"]
    assert "chunkwise_over_llama_memory_64" in data["summary"]


def test_train_max_minutes_skips_the_remaining_cases_and_still_reports(tmp_path, monkeypatch):
    assert _main(monkeypatch, _tiny_train(tmp_path, "--max-minutes", "1e-9")) == 0
    rows = _load(tmp_path, "train")["rows"]  # the JSON, table and chart are still written
    assert len(rows) == 6 and all(r["error"] == "skipped: --max-minutes 1e-09 reached" for r in rows)


def test_isolated_worker_reports_result_peak_memory_and_errors():
    ok = run_isolated("retnet_benchmarks.report:machine_info", {}, timeout_s=120)
    assert ok["torch"] == torch.__version__ and ok["process_peak_rss"] > 10 * 1024**2
    bad = run_isolated("retnet_benchmarks.nonexistent:f", {}, timeout_s=120)
    assert bad["error"].startswith("exit code") and "nonexistent" in bad["error"]


def test_quality_smoke(tmp_path, monkeypatch):
    argv = [
        "bench",
        "quality",
        "--tiny",
        "--in-process",
        "--factors",
        "1,2",
        "--threads",
        "1",
        "--out-dir",
        str(tmp_path),
    ]
    assert _main(monkeypatch, argv) == 0
    data = _load(tmp_path, "quality")
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"retnet", "gated", "hybrid", "yoco", "llama", "mamba", "mamba2", "rwkv"}
    for r in rows.values():
        assert "error" not in r
        assert r["train_tokens"] == 3 * 2 * 16 and r["eval_tokens"] % 32 == 0
        assert 0 < r["bpb_1x"] < 16 and 0 < r["bpb_2x"] < 16  # byte vocabulary: at most ~8 bits untrained
    # every model trained and evaluated on the same tokens: gated differs from RetNet only by the decay gate
    assert len({r["eval_tokens"] for r in rows.values()}) == 1
    assert {"retnet_bpb_vs_llama (goal <= 0.03)", "retnet_rise_at_2x (goal < 0.02)"} <= set(data["summary"])
    _assert_equal_size(data)
    assert abs(rows["gated"]["params"] - rows["llama"]["params"]) / rows["llama"]["params"] < 0.05
    assert {"hybrid_bpb_vs_llama", "yoco_bpb_vs_llama", "yoco_rise_at_2x"} <= set(data["summary"])
    md = (tmp_path / "quality.md").read_text()
    assert "hybrid: block_types GA" in md
    # the recurrent peers: compared with RetNet, their length behaviour, and the reference-path caveat
    assert {"retnet_bpb_vs_mamba", "retnet_bpb_vs_mamba2", "retnet_bpb_vs_rwkv", "rwkv_rise_at_2x"} <= set(
        data["summary"]
    )
    for peer in ("mamba", "mamba2", "rwkv"):
        expected = rows["retnet"]["bpb_1x"] / rows[peer]["bpb_1x"] - 1
        assert data["summary"][f"retnet_bpb_vs_{peer}"] == pytest.approx(expected, rel=1e-12)
    assert REFERENCE_PATH_NOTE in " ".join(md.split()) and "train_s is therefore not representative" in md


def test_quality_model_minutes_turns_a_slow_model_into_an_error_row(tmp_path, monkeypatch):
    """A model still training after --model-minutes is reported with the steps it reached, not evaluated."""
    argv = ["bench", "quality", "--tiny", "--factors", "1", "--threads", "1", "--models", "rwkv"]
    assert _main(monkeypatch, [*argv, "--model-minutes", "1e-9", "--out-dir", str(tmp_path)]) == 0
    (row,) = _load(tmp_path, "quality")["rows"]
    assert (
        row["model"] == "rwkv"
        and "TimeoutError: stopped after 0 of 3 steps: over --model-minutes 1e-09" in row["error"]
    )


def test_quality_trains_models_in_parallel_workers_in_the_report_order(tmp_path, monkeypatch):
    """--workers 2: two worker processes at once; rows keep the --models order; --max-minutes is the run's."""
    argv = ["bench", "quality", "--tiny", "--factors", "1", "--threads", "1", "--models", "rwkv", "retnet", "llama"]
    assert _main(monkeypatch, [*argv, "--workers", "2", "--out-dir", str(tmp_path)]) == 0
    rows = _load(tmp_path, "quality")["rows"]
    assert [r["model"] for r in rows] == ["rwkv", "retnet", "llama"] and not any("error" in r for r in rows)
    assert _main(monkeypatch, [*argv, "--workers", "2", "--max-minutes", "1e-9", "--out-dir", str(tmp_path)]) == 0
    rows = _load(tmp_path, "quality")["rows"]
    assert [r["error"] for r in rows] == ["skipped: --max-minutes 1e-09 reached"] * 3


@pytest.mark.slow
def test_decode_paths_and_int8_quality(tmp_path, monkeypatch):
    """Batch-1 rows on the forward and int8 paths next to the main (eager) one, ratios in the summary, and the
    int8 quality cost of a trained model directory; --quantize int8 off the CPU is refused naming the flag."""
    from retnet.training.trainer import train
    from tests.training.helpers import small_corpus, tiny_config

    corpus = small_corpus(tmp_path / "data")
    train(tiny_config(tmp_path / "model", corpus, tokenizer="bpe", vocab_size=300, steps=2), quiet=True)
    argv = _tiny_decode(tmp_path, "--prefill-max", "16", "--warmup", "1", "--steps", "2", "--models", "retnet")
    argv = [a for a in argv if a not in ("--paths", "none")] + ["--paths", "forward,int8"]
    argv += ["--batch8-contexts", "none", "--model-dir", str(tmp_path / "model"), "--quality-batches", "1"]
    assert _main(monkeypatch, argv) == 0
    data = _load(tmp_path, "decode")
    paths = {(r["path"], r["context"]) for r in data["rows"] if "error" not in r}
    assert paths == {("eager", 16), ("eager", 64), ("forward", 16), ("int8", 16)}
    int8 = next(r for r in data["rows"] if r["path"] == "int8")
    eager = next(r for r in data["rows"] if r["path"] == "eager" and r["context"] == 16)
    assert int8["weights_read_mib"] < 0.5 * eager["weights_read_mib"]  # int8 matrices: a quarter of the bytes
    s = data["summary"]
    assert s["int8_over_eager_tokens_per_s_16 (goal >= 1.7)"] > 0 and s["forward_over_eager_tokens_per_s_16"] > 0
    assert s["val_bits_per_byte_float32"] > 0 and s["val_bits_per_byte_int8"] > 0
    change = s["int8_bits_per_byte_change (goal within 1%)"]
    assert change == s["val_bits_per_byte_int8"] / s["val_bits_per_byte_float32"] - 1


def test_decode_refuses_int8_off_the_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("retnet_benchmarks.bench_decode.pick_device", lambda name: __import__("torch").device("meta"))
    assert _main(monkeypatch, _tiny_decode(tmp_path, "--quantize", "int8")) == 2
    assert "--quantize int8 runs on the CPU only" in capsys.readouterr().err
