"""Fixtures: a tiny BPE tokenizer and tiny model directories (as ``retnet train`` writes them)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from tests.hf.helpers import bpe_tokenizer, model_dir, tiny_core


@pytest.fixture(scope="session")
def bpe() -> Tokenizer:
    return bpe_tokenizer()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, bpe):
    """A float32 model directory with config.json, model.safetensors, tokenizer.json and tokenizer_config.json."""
    return model_dir(tmp_path_factory.mktemp("retnet") / "tiny", tiny_core(bpe.get_vocab_size()), bpe)
