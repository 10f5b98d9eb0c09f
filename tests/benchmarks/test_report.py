"""The harness's report writer: JSON + Markdown + PNG with command and machine; the chart is closed after."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from retnet_benchmarks.report import subplots, write_report


def test_write_report_writes_three_files_and_closes_the_chart(tmp_path):
    fig, ax = subplots(figsize=(3, 2))
    ax.plot([1, 2], [3, 4])
    rows = [{"case": "a", "ms": 1.23456}, {"case": "b", "ms": None}]
    paths = write_report("toy", title="Toy", rows=rows, out_dir=tmp_path, summary={"ratio": 2.0}, chart=fig)
    assert set(paths) == {"json", "md", "png"} and all(p.stat().st_size > 0 for p in paths.values())
    data = json.loads(paths["json"].read_text())
    assert {"name", "title", "command", "machine", "date", "summary", "rows"} <= set(data)
    assert data["rows"] == rows and data["summary"] == {"ratio": 2.0}
    md = paths["md"].read_text()
    assert "| a | 1.235 |" in md and "![Toy](toy.png)" in md and md.startswith("# Toy\n")
    assert not plt.fignum_exists(fig.number)
