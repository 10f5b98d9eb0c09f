"""Smoke test of ``retnet bench hf`` (toy size): the report's schema and the constant cache size."""

from __future__ import annotations

import json

import pytest

from retnet_benchmarks.bench_hf import run


def test_bench_hf_writes_its_report(tmp_path):
    summary = run("tiny", tokens=20, prompt_len=4, threads=1, out_dir=str(tmp_path))
    assert summary["cache size constant"] is True
    assert summary["cache bytes after 10 tokens"] == summary["cache bytes after 20 tokens"] > 0
    report = json.loads((tmp_path / "hf_decode.json").read_text())
    assert [r["loop"] for r in report["rows"]] == ["transformers generate", "retnet generate"]
    assert all(r["late/early"] > 0 for r in report["rows"])
    assert (tmp_path / "hf_decode.md").is_file() and (tmp_path / "hf_decode.png").is_file()
    with pytest.raises(ValueError, match="--tokens"):
        run("tiny", tokens=5, prompt_len=4, threads=1, out_dir=str(tmp_path))
