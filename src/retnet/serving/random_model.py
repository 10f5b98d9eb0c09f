"""A randomly initialised model directory with a byte-level tokenizer, for tests and serving benchmarks.

Serving cost does not depend on what the weights learned, so benchmarks can run without a trained model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from retnet.data.tokenizers import byte_to_char
from retnet.models import RetNetConfig, RetNetForCausalLM
from retnet.models.directory import TOKENIZER_FILE, atomic_write_text

SPECIAL = "<|endoftext|>"


def byte_tokenizer() -> Tokenizer:
    """256 byte tokens (ids in byte order) plus ``<|endoftext|>`` (id 256)."""
    vocab = {c: b for b, c in enumerate(byte_to_char())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([SPECIAL])
    return tok


def write_random_model(directory: str | Path, config: RetNetConfig | None = None, seed: int = 0) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a byte-level ``tokenizer.json`` into ``directory``."""
    config = config or RetNetConfig.preset("tiny", vocab_size=257, eos_token_id=256)
    if config.vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 for the byte tokenizer, got {config.vocab_size}")
    torch.manual_seed(seed)
    model = RetNetForCausalLM(config).eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    atomic_write_text(directory / TOKENIZER_FILE, byte_tokenizer().to_str(pretty=True))
    return directory
