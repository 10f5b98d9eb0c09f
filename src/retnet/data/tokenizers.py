"""Tokenizers: plain UTF-8 bytes (no training) or a byte-level BPE trained with Hugging Face ``tokenizers``.

Both are stored the same way, as a Hugging Face ``tokenizer.json`` in the model directory (so
``transformers.PreTrainedTokenizerFast(tokenizer_file=...)`` can wrap either). The byte tokenizer is a
byte-level BPE with no merges whose id ``i`` is byte ``i``. Every token maps to a fixed byte string, which
gives exact bits-per-byte figures and lets streamed output be decoded incrementally.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from retnet.models.directory import TOKENIZER_FILE, atomic_write_text, read_tokenizer, tokenizer_path

KINDS = ("bpe", "byte")


@lru_cache(maxsize=1)
def byte_to_char() -> tuple[str, ...]:
    """The byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 up.

    This is the reversible byte -> visible character table that byte-level BPE uses in its vocabulary.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_char())}


class Tokenizer:
    """A byte-level tokenizer (``kind`` "byte" or "bpe") backed by a Hugging Face ``tokenizers.Tokenizer``."""

    def __init__(self, hf: HFTokenizer, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        self.hf = hf
        self.kind = kind
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        c2b = char_to_byte()
        pieces: list[bytes] = []
        for i in range(self.vocab_size):
            token = hf.id_to_token(i)
            if token is None:
                raise ValueError(f"tokenizer has no token for id {i} (ids must be contiguous)")
            try:
                pieces.append(bytes(c2b[c] for c in token))
            except KeyError:  # an added/special token, stored as its UTF-8 text
                pieces.append(token.encode("utf-8"))
        self._bytes = pieces
        self._byte_lengths = [len(p) for p in pieces]

    @classmethod
    def byte(cls) -> Tokenizer:
        """The 256-token byte tokenizer: id ``i`` is byte ``i``."""
        vocab = {c: b for b, c in enumerate(byte_to_char())}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        return cls(hf, "byte")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Train a byte-level BPE with ``vocab_size`` tokens (>= 257) on ``texts``."""
        if vocab_size < 257:
            raise ValueError(f"BPE vocab_size must be >= 257 (256 bytes + merges), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=list(byte_to_char()),
            special_tokens=[],
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, "bpe")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` from a model directory (or the file itself); the kind is recognised from its
        content. A missing file is a ``FileNotFoundError``, a bad one a ``ValueError``; both name the file."""
        hf = read_tokenizer(directory)
        try:
            return cls(hf, "byte" if _is_byte_tokenizer(hf) else "bpe")
        except ValueError as exc:
            raise ValueError(f"{tokenizer_path(directory)}: {exc}") from None

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` atomically; returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, self.hf.to_str(pretty=True))
        return path

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; ``decode(encode(text)) == text``.

        Long texts are cut after blank lines and the paragraphs encoded in parallel (several times faster than
        one call on megabytes; no token spans a paragraph break, which costs next to nothing)."""
        if self.kind == "byte":
            return list(text.encode("utf-8"))
        if len(text) < 65536:
            return self.hf.encode(text, add_special_tokens=False).ids
        return [i for ids in self.encode_batch(paragraphs(text)) for i in ids]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.kind == "byte":
            return [list(t.encode("utf-8")) for t in texts]
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for."""
        return self._bytes[token_id]

    def byte_lengths(self) -> list[int]:
        """Bytes per token id (for bits per byte)."""
        return list(self._byte_lengths)

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", errors="replace")

    def describe(self) -> str:
        return f"{self.kind} tokenizer, vocab {self.vocab_size}"


def paragraphs(text: str) -> list[str]:
    """``text`` cut after each blank line; joining the pieces gives ``text`` back."""
    return [p for p in _PARAGRAPH_END.split(text) if p]


_PARAGRAPH_END = re.compile(r"(?<=\n\n)")


def _is_byte_tokenizer(hf: HFTokenizer) -> bool:
    """A BPE without merges whose 256 tokens are the bytes in order: our byte tokenizer."""
    if hf.get_vocab_size(with_added_tokens=True) != 256:
        return False
    model = json.loads(hf.to_str()).get("model", {})
    vocab = model.get("vocab", {})
    alphabet = byte_to_char()
    return (
        model.get("type") == "BPE"
        and not model.get("merges")
        and len(vocab) == 256
        and all(vocab.get(alphabet[b]) == b for b in range(256))
    )
