"""A randomly initialised model directory with a byte-level tokenizer, for tests and serving benchmarks.

Serving cost does not depend on what the weights learned, so benchmarks can run without a trained model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from retnet.models import RetNetConfig, RetNetForCausalLM
from retnet.models.directory import TOKENIZER_FILE, atomic_write_text

SPECIAL = "<|endoftext|>"


def byte_tokenizer() -> Tokenizer:
    """256 byte tokens (ids in byte order) plus ``<|endoftext|>`` (id 256)."""
    vocab = {c: b for b, c in enumerate(_byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([SPECIAL])
    return tok


def _byte_chars() -> list[str]:
    """The GPT-2 byte-to-unicode map: printable bytes map to themselves, the others to 256 + n."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    assert set(chars.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    return [chars[b] for b in range(256)]


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
