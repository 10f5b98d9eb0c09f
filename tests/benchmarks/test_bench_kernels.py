"""``retnet bench kernels``: refuses without a GPU; its summary and chart work on toy rows (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from retnet.cli.main import main
from retnet_benchmarks import bench_kernels, kernels_gpu


@pytest.mark.parametrize("extra", [[], ["--check"]])
def test_refuses_without_cuda_in_one_line(extra, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "kernels", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA GPU" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_arguments_are_named(capsys):
    assert main(["bench", "kernels", "--dims", "300"]) == 2
    assert "--dims" in capsys.readouterr().err
    assert main(["bench", "kernels", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err


def _rows():
    # Toy numbers for the schema only (not measurements).
    rows = []
    for D, scale in ((128, 1.0), (256, 2.0)):
        for T in (4096, 8192):
            f = T / 4096 * scale
            rows += [
                {"method": "ours", "D": D, "T": T, "fwd_ms": 1.0 * f, "fwdbwd_ms": 2.0 * f},
                {"method": "fla", "D": D, "T": T, "fwd_ms": 2.0 * f, "fwdbwd_ms": 5.0 * f},
                {"method": "sdpa", "D": D, "T": T, "fwd_ms": 4.0 * f, "fwdbwd_ms": 12.0 * f},
            ]
    return rows


def test_summary_ratios_and_chart():
    decode = {"B": 64, "frac_of_copy_bw": 0.8, "frac_of_peak_bw": 0.75}
    s = kernels_gpu.summarize(_rows(), decode)
    assert s["fla / ours, fwd+bwd, D=128, T=8K (goal >= 1.2)"] == pytest.approx(2.5)
    assert s["SDPA / ours, fwd+bwd, D=128, T=8K (goal >= 3)"] == pytest.approx(6.0)
    assert s["max over T of ours D=256 / D=128, fwd+bwd (goal <= 2.2)"] == pytest.approx(2.0)
    assert s["decode, B=64 states: frac_of_peak_bw (goal >= 0.7)"] == 0.75
    fig = bench_kernels.chart(_rows())
    assert len(fig.axes) == 2 and all(len(ax.lines) == 3 for ax in fig.axes)
    # Missing methods (fla not installed) leave their ratios out instead of failing.
    rows = [r for r in _rows() if r["method"] != "fla"]
    assert not any(k.startswith("fla") for k in kernels_gpu.summarize(rows, None))
