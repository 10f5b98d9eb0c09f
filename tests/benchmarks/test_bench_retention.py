"""Smoke tests of ``retnet bench retention`` at toy sizes: output files, schema and the skip rules."""

from __future__ import annotations

import json

import pytest

from retnet.cli.main import main
from retnet_benchmarks.bench_retention import CASE_TARGET, crossover, estimate_peak_bytes
from retnet_benchmarks.measure import run_isolated

TOY = ["--heads", "2", "--dk", "4", "--dv", "8", "--chunk-size", "8", "--repeats", "1", "--threads", "1"]


def test_toy_run_writes_report(tmp_path):
    argv = ["bench", "retention", "--lengths", "16,32", "--auto-lengths", "8,16", "--recurrent-max-len", "16"]
    argv += [*TOY, "--in-process", "--quiet", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "retention.json").read_text())
    assert {"command", "machine", "date", "summary", "rows", "auto_switch_rows"} <= data.keys()
    rows = {(r["mode"], r["T"]): r for r in data["rows"]}
    assert set(rows) == {(m, T) for m in ("parallel", "chunkwise", "recurrent") for T in (16, 32)}
    assert rows[("recurrent", 32)]["status"].startswith("skipped")
    for key, r in rows.items():
        if key != ("recurrent", 32):
            assert r["status"] == "ok", r
            assert r["time_ms"] > 0 and r["time_ms_min"] <= r["time_ms"] and r["peak_MiB"] >= 0
            assert r["repeats"] == 1 and r["est_peak_MiB"] > 0
    assert {(r["pass"], r["T"]) for r in data["auto_switch_rows"]} == {
        (p, T) for p in ("fwd+bwd", "fwd") for T in (8, 16)
    }
    assert all(r["parallel_ms"] > 0 and r["chunkwise_ms"] > 0 for r in data["auto_switch_rows"])
    # The goals need T = 4096/8192/16384, absent here: reported as not applicable, never as met.
    assert data["summary"]["time goal met"] == "n/a"
    assert data["summary"]["memory goal met"] == "n/a"
    md = (tmp_path / "retention.md").read_text()
    assert "| mode | T | status |" in md and "retention.png" in md
    assert (tmp_path / "retention.png").stat().st_size > 1000


def test_memory_budget_skips_with_estimate(tmp_path):
    argv = ["bench", "retention", "--lengths", "128", "--modes", "parallel,chunkwise", "--auto-lengths", ""]
    argv += [*TOY, "--in-process", "--quiet", "--out-dir", str(tmp_path), "--mem-budget-gb", "0.0005"]
    assert main(argv) == 0
    rows = {r["mode"]: r for r in json.loads((tmp_path / "retention.json").read_text())["rows"]}
    assert rows["parallel"]["status"].startswith("not run: estimated")
    assert "time_ms" not in rows["parallel"] and rows["parallel"]["est_peak_MiB"] > 0.0005 * 1024
    assert rows["chunkwise"]["status"] == "ok"


def test_estimates_grow_as_expected():
    spec = {"batch": 1, "heads": 8, "dk": 64, "dv": 128, "chunk_size": 64, "dtype": "float32"}
    par = [estimate_peak_bytes("parallel", T, spec) for T in (4096, 8192)]
    chunk = [estimate_peak_bytes("chunkwise", T, spec) for T in (4096, 8192)]
    assert 3.5 < par[1] / par[0] <= 4.0  # quadratic
    assert chunk[1] / chunk[0] == pytest.approx(2.0, rel=0.01)  # linear
    assert estimate_peak_bytes("parallel", 16384, spec) > 16 * 2**30  # not run under the default budget


def test_crossover_is_last_length_before_chunkwise_wins():
    rows = [{"pass": "fwd", "T": t, "parallel_over_chunkwise": r} for t, r in ((64, 0.5), (128, 0.9), (256, 1.2))]
    assert crossover(rows, "fwd") == 128
    assert crossover([{"pass": "fwd", "T": 64, "parallel_over_chunkwise": 2.0}], "fwd") is None


def test_subprocess_case_reports_time_and_memory():
    spec = {"mode": "chunkwise", "T": 32, "batch": 1, "heads": 2, "dk": 4, "dv": 8, "dtype": "float32"}
    spec.update(chunk_size=8, repeats=1, threads=1, backward=True, max_seconds=None)
    res = run_isolated(CASE_TARGET, {"spec": spec}, timeout_s=120, threads=1)
    assert "error" not in res, res
    assert res["time_ms"] > 0 and res["peak_bytes"] >= 0 and res["baseline_rss_bytes"] > 10 * 2**20


def test_bad_arguments_name_the_option(capsys):
    assert main(["bench", "retention", "--modes", "parallel,fast"]) == 2
    assert "--modes" in capsys.readouterr().err
    assert main(["bench", "retention", "--lengths", "1,x"]) == 2
    assert "--lengths" in capsys.readouterr().err
