"""Exact resume: an interrupted and resumed run follows the same loss curve as an uninterrupted one."""

import torch
from safetensors.torch import load_file

from retnet.training.checkpoint import list_checkpoints
from retnet.training.metrics import read_metrics
from retnet.training.trainer import train

from .helpers import small_corpus, tiny_config


def _curve(run_dir):
    return [(int(r["step"]), float(r["loss"]), r["val_loss"]) for r in read_metrics(run_dir / "metrics.csv")]


def test_resume_after_interruption_reproduces_the_run(tmp_path):
    corpus = small_corpus(tmp_path / "data")
    full = train(tiny_config(tmp_path / "full", corpus), quiet=True)
    assert len(full.losses) == 12 and full.losses[-1] < full.losses[0]

    cfg = tiny_config(tmp_path / "cut", corpus)
    first = train(cfg, stop_after=6, quiet=True)
    assert first.steps == 6 and not (tmp_path / "cut" / "model.safetensors").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [4, 6]
    torch.manual_seed(999)  # the resumed run must restore its own RNG state
    second = train(cfg, resume="latest", quiet=True)

    assert first.losses + second.losses == full.losses  # bit-for-bit on the CPU
    assert _curve(tmp_path / "cut") == _curve(tmp_path / "full")
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.final_eval.bits_per_byte == full.final_eval.bits_per_byte


def test_resume_from_an_older_checkpoint_truncates_the_metrics(tmp_path):
    corpus = small_corpus(tmp_path / "data")
    cfg = tiny_config(tmp_path / "run", corpus, steps=8)
    full = train(cfg, quiet=True)
    older = list_checkpoints(tmp_path / "run")[0]
    assert older[0] == 4
    again = train(cfg, resume=str(older[1]), quiet=True)
    assert again.losses == full.losses[4:]
    assert [s for s, _, _ in _curve(tmp_path / "run")] == list(range(1, 9))
