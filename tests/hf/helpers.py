"""Tiny models and tokenizers for the transformers-integration tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from retnet.hf import save_tokenizer
from retnet.models import RetNetConfig, RetNetForCausalLM

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 8


def byte_alphabet() -> list[str]:
    """The byte-level BPE alphabet (printable bytes as themselves), as ``tokenizers`` builds it."""
    return pre_tokenizers.ByteLevel.alphabet()


def bpe_tokenizer(vocab_size: int = 300) -> Tokenizer:
    """A byte-level BPE trained on ``TEXT`` (what ``retnet train --tokenizer bpe`` writes, in miniature)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=byte_alphabet(), special_tokens=[], show_progress=False
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    return tok


def tiny_core(vocab_size: int, seed: int = 0, dtype=torch.float32, **overrides) -> RetNetForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, value_dim=48, ffn_dim=64, chunk_size=8)
    cfg.update(overrides)
    return RetNetForCausalLM(RetNetConfig(**cfg)).to(dtype).eval()


def model_dir(path: Path, core: RetNetForCausalLM, tokenizer: Tokenizer | None = None, **special) -> Path:
    """A model directory as ``retnet train`` writes it (config, weights, tokenizer.json) plus tokenizer_config."""
    core.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save(str(path / "tokenizer.json"))
        save_tokenizer(path, **special)
    return path


def byte_tokenizer() -> Tokenizer:
    """The 256-token byte tokenizer of ``retnet train --tokenizer byte``: id ``i`` is byte ``i``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok
