"""``checkpoint_activations`` and ``compile`` change memory and speed, not the loss curve."""

from __future__ import annotations

import argparse

import pytest

from retnet.cli import cmd_train
from retnet.training.config import TrainConfig, build_config
from retnet.training.errors import TrainError
from retnet.training.trainer import compile_seconds, train
from tests.training.helpers import small_corpus, tiny_config

# Long enough that retention runs chunkwise (seq_len > PARALLEL_MAX_LEN), with dropout.
LONG = {"seq_len": 200, "batch_size": 2, "model_overrides": {"dropout": 0.1, "chunk_size": 32}}


def test_checkpointed_training_gives_the_same_loss_curve(tmp_path):
    corpus = small_corpus(tmp_path / "data")
    plain = train(tiny_config(tmp_path / "a", corpus, **LONG), quiet=True, progress=False)
    ckpt = train(tiny_config(tmp_path / "b", corpus, checkpoint_activations=True, **LONG), quiet=True, progress=False)
    assert len(plain.losses) == 12
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-6, abs=0)
    assert plain.compile_s is None


@pytest.mark.slow
def test_compiled_training_matches_eager_over_20_steps(tmp_path):
    corpus = small_corpus(tmp_path / "data")
    # No dropout: compiled code draws its random masks from another generator than eager PyTorch.
    model = {**LONG["model_overrides"], "dropout": 0.0}
    settings = {**LONG, "model_overrides": model, "steps": 20, "eval_interval": 20, "checkpoint_interval": 20}
    eager = train(tiny_config(tmp_path / "a", corpus, **settings), quiet=True, progress=False)
    compiled = train(tiny_config(tmp_path / "b", corpus, compile=True, **settings), quiet=True, progress=False)
    assert len(compiled.losses) == 20
    assert max(abs(a - b) for a, b in zip(compiled.losses, eager.losses)) < 1e-5
    assert compiled.compile_s is not None and compiled.compile_s > 0


def test_compile_seconds():
    assert compile_seconds([5.0, 1.0, 1.5]) == 4.0
    assert compile_seconds([0.5, 1.0]) == 0.0
    assert compile_seconds([3.0]) is None


@pytest.mark.parametrize("field", ["checkpoint_activations", "compile"])
def test_switches_must_be_booleans(field):
    with pytest.raises(TrainError, match=field):
        build_config("smoke", overrides={field: "yes"})


def test_cli_flags_reach_the_config():
    parser = argparse.ArgumentParser()
    cmd_train.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--checkpoint-activations", "--compile"])
    assert args.checkpoint_activations is True and args.compile is True
    args = parser.parse_args(["train"])
    assert args.checkpoint_activations is None and args.compile is None
    assert TrainConfig().checkpoint_activations is False and TrainConfig().compile is False


def test_checkpoint_segment_flag_and_bounds():
    parser = argparse.ArgumentParser()
    cmd_train.register(parser.add_subparsers())
    assert parser.parse_args(["train", "--checkpoint-segment", "512"]).checkpoint_segment == 512
    assert TrainConfig().checkpoint_segment == 1024
    assert build_config("smoke", overrides={"checkpoint_segment": 0}).checkpoint_segment == 0
    with pytest.raises(TrainError, match="checkpoint_segment"):
        build_config("smoke", overrides={"checkpoint_segment": -1})
