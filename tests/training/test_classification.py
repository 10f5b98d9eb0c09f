"""``run_task`` trains, evaluates and saves a classifier end to end (a few steps, tiny model)."""

from __future__ import annotations

import json

import pytest

from retnet.models.encoder import load_encoder
from retnet.training.classification import build_classifier, run_task


def test_run_task_digits_end_to_end(tmp_path):
    small = dict(hidden_size=16, num_layers=1, num_heads=2, value_dim=16, ffn_dim=16)
    result = run_task("digits", "retnet", out_dir=tmp_path / "d", steps=80, batch_size=32, model_overrides=small)
    assert 0.0 <= result.accuracy <= 1.0 and result.parameters > 0
    assert result.accuracy > 0.2  # chance is 0.1
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert saved["accuracy"] == result.accuracy
    assert load_encoder(tmp_path / "d").config.kind == "vision"


def test_baselines_match_parameter_count():
    for task in ("genre", "digits"):
        a = sum(p.numel() for p in build_classifier(task, "retnet").parameters())
        b = sum(p.numel() for p in build_classifier(task, "transformer").parameters())
        assert abs(a - b) / a < 0.05, (task, a, b)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        build_classifier("digits", "mamba")
