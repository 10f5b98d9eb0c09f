"""Toy-size smoke test of ``retnet bench state-memory``: the report's schema and its invariants."""

from __future__ import annotations

import json

import pytest

from retnet.cli.main import main as cli_main
from retnet.models import PRESETS, RetNetConfig
from retnet_benchmarks.bench_state_memory import state_table


@pytest.mark.slow
def test_state_memory_report(tmp_path):
    argv = ["bench", "state-memory", "--preset", "tiny", "--tokens", "1,3", "--prompt-len", "2", "--out-dir"]
    assert cli_main([*argv, str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"state-memory.json", "state-memory.md", "state-memory.png"}
    data = json.loads((tmp_path / "state-memory.json").read_text())
    rows = data["rows"]
    assert [r["generated_tokens"] for r in rows] == [1, 3]
    tiny = RetNetConfig.preset("tiny")
    assert all(r["state_bytes"] == tiny.num_layers * tiny.state_nbytes_per_layer() + 8 for r in rows)
    assert all(r["peak_rss_MiB"] >= r["rss_before_decode_MiB"] > 10 for r in rows)
    s = data["summary"]
    assert s["state bytes (all layers) constant"] is True
    assert s["state bytes per layer, measured model"] == tiny.state_nbytes_per_layer()
    growth = 100 * (rows[1]["peak_rss_MiB"] - rows[0]["peak_rss_MiB"]) / rows[0]["peak_rss_MiB"]
    assert s["peak RSS growth (%)"] == pytest.approx(growth, abs=1e-3)
    md = (tmp_path / "state-memory.md").read_text()
    assert "## Recurrent state per layer" in md and "| 65b | 64 | 32 | 256 x 432 | 14155776 |" in md


def test_state_table_covers_presets():
    rows = state_table()
    assert [r["preset"] for r in rows] == list(PRESETS)
    base = next(r for r in rows if r["preset"] == "base")
    assert base["state_bytes_per_layer"] == 4 * 2 * 256 * 432
    assert base["kv_cache_equal_at_tokens"] == 4 * 2 * 256 * 432 // (2 * 512 * 4)


@pytest.mark.parametrize("bad", ["100", "a,b", "0,5"])
def test_bad_token_counts_are_usage_errors(bad, capsys):
    assert cli_main(["bench", "state-memory", "--tokens", bad]) == 2
    assert "--tokens" in capsys.readouterr().err
