"""Our tokenizer.json (byte or BPE) as a ``PreTrainedTokenizerFast`` through ``AutoTokenizer``."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from retnet.hf import save_tokenizer
from tests.hf.helpers import byte_tokenizer

SAMPLES = ["To be, or not to be", "  two  spaces\nand a newline\n", "héllo wörld — ünïcode ✓", ""]


def test_bpe_tokenizer_loads_as_fast_tokenizer(model_path, bpe):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert json.loads((model_path / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )
    for text in SAMPLES:
        ids = tokenizer(text)["input_ids"]
        assert ids == bpe.encode(text).ids  # no special tokens added
        assert tokenizer.decode(ids) == text


def test_byte_tokenizer_maps_bytes_to_ids(tmp_path):
    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    save_tokenizer(tmp_path, model_max_length=2048, pad_token="Ā")  # "Ā" is byte 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 256 and tokenizer.model_max_length == 2048
    for text in SAMPLES:
        assert tokenizer(text)["input_ids"] == list(text.encode("utf-8"))
        assert tokenizer.decode(list(text.encode("utf-8"))) == text
    batch = tokenizer(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[0, 0, 97, 98], [97, 98, 99, 100]]  # left padding with byte 0
    assert torch.equal(batch["attention_mask"], torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))


def test_directory_without_tokenizer_config_still_loads(tmp_path, model_path):
    """A directory with only tokenizer.json (and a retnet config.json) resolves through the registration."""
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((model_path / name).read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.decode(tokenizer("To be, or")["input_ids"]) == "To be, or"


def test_save_tokenizer_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        save_tokenizer(tmp_path)
    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="pad_token '<pad>'"):
        save_tokenizer(tmp_path, pad_token="<pad>")
    with pytest.raises(ValueError, match="model_max_length"):
        save_tokenizer(tmp_path, model_max_length=0)
    assert not (tmp_path / "tokenizer_config.json").exists()
