import shutil

import pytest

from retnet.training.trainer import train
from tests.training.helpers import small_corpus, tiny_config


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A model directory from a few steps of training with a small BPE tokenizer."""
    root = tmp_path_factory.mktemp("trained")
    corpus = small_corpus(root / "data")
    cfg = tiny_config(root / "model", corpus, tokenizer="bpe", vocab_size=300, steps=4, checkpoint_interval=2)
    train(cfg, quiet=True)
    return root / "model"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    return small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def existing_run(tmp_path, trained_dir):
    """A copy of ``trained_dir`` that a refused command must leave byte for byte as it was."""
    run = tmp_path / "existing"
    shutil.copytree(trained_dir, run)
    return run
