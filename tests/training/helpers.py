"""Tiny corpora and configs for fast training tests."""

from __future__ import annotations

from pathlib import Path

from retnet.data.corpus import load_corpus
from retnet.training.config import TrainConfig, build_config

TINY_MODEL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "value_dim": 32, "ffn_dim": 64}


def small_corpus(folder: Path, chars: int = 30_000) -> Path:
    """The first ``chars`` characters of one embedded play, as a file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = next(d.text for d in load_corpus().documents if "romeo-and-juliet" in d.name)[:chars]
    path = folder / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def tiny_config(out: Path, corpus: Path, **overrides) -> TrainConfig:
    settings = {
        "out": str(out),
        "data": [str(corpus)],
        "model_overrides": dict(TINY_MODEL),
        "tokenizer": "byte",
        "seq_len": 32,
        "batch_size": 4,
        "steps": 12,
        "warmup_steps": 3,
        "eval_interval": 6,
        "eval_batches": 2,
        "final_eval_batches": 2,
        "eval_batch_size": 8,
        "checkpoint_interval": 4,
        "threads": 1,
        "device": "cpu",
        **overrides,
    }
    return build_config("smoke", overrides=settings)
