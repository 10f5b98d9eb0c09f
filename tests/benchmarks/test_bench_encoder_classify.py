"""Smoke tests of ``retnet bench encoder`` and ``retnet bench classify`` at toy sizes: the output schema."""

from __future__ import annotations

import json

from retnet.cli.main import main


def test_bench_encoder_smoke(tmp_path):
    rc = main(
        [
            "bench",
            "encoder",
            "--lengths",
            "32",
            "64",
            "--layers",
            "1",
            "--hidden",
            "16",
            "--heads",
            "2",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "encoder.json").read_text())
    assert {r["arch"] for r in data["rows"]} == {"retnet-parallel", "retnet-chunkwise", "transformer"}
    for row in data["rows"]:
        assert row["ms"] > 0 and row["peak_mb"] >= 0
    params = {r["arch"]: r["parameters"] for r in data["rows"]}
    assert abs(params["transformer"] - params["retnet-chunkwise"]) / params["retnet-chunkwise"] < 0.05
    assert (tmp_path / "encoder.md").exists() and (tmp_path / "encoder.png").exists()
    assert data["machine"]["cpu_count"] and data["command"].startswith("retnet")


def test_bench_classify_smoke(tmp_path):
    rc = main(
        [
            "bench",
            "classify",
            "--tasks",
            "digits",
            "--steps",
            "digits=3",
            "--threads",
            "1",
            "--quiet",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "classify.json").read_text())
    assert [r["arch"] for r in data["rows"]] == ["retnet", "transformer"]
    a, b = (r["parameters"] for r in data["rows"])
    assert abs(a - b) / a < 0.05
    assert all(0 <= r["accuracy"] <= 1 for r in data["rows"])
