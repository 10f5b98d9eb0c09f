"""Tokenizers: plain UTF-8 bytes (no training) or a byte-level BPE trained with Hugging Face ``tokenizers``.

Both are stored the same way, as a Hugging Face ``tokenizer.json`` in the model directory (so
``transformers.PreTrainedTokenizerFast(tokenizer_file=...)`` can wrap either); any other ``tokenizer.json``
(e.g. one copied in by ``retnet convert``) loads too. The byte tokenizer is a byte-level BPE with no merges
whose id ``i`` is byte ``i``. Every token maps to a fixed byte string, which gives exact bits-per-byte figures
and lets streamed output be decoded incrementally (:class:`Detokenizer`, O(1) per token).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from retnet.models.directory import TOKENIZER_FILE, atomic_write_text, read_tokenizer, tokenizer_path

KINDS = ("bpe", "byte")
# Special tokens that end a document or a turn, if the tokenizer has them.
EOS_CANDIDATES = ("<|endoftext|>", "<|end|>", "</s>", "<eos>", "<|eos|>", "<|im_end|>")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


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

    def __init__(self, hf: HFTokenizer, kind: str, eos_token_id: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        self.hf = hf
        self.kind = kind
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self._bytes = _token_bytes(hf, self.vocab_size)
        self._byte_lengths = [len(p) for p in self._bytes]
        ids = {hf.token_to_id(t) for t in EOS_CANDIDATES} - {None}
        if eos_token_id is not None:
            ids.add(int(eos_token_id))
        self.eos_token_ids: frozenset[int] = frozenset(ids)  # ids that end generation

    @classmethod
    def byte(cls, eos_token_id: int | None = None) -> Tokenizer:
        """The 256-token byte tokenizer: id ``i`` is byte ``i`` (``eos_token_id``: a byte that ends generation)."""
        vocab = {c: b for b, c in enumerate(byte_to_char())}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        return cls(hf, "byte", eos_token_id)

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
    def load(cls, directory: str | Path, eos_token_id: int | None = None) -> Tokenizer:
        """Load ``tokenizer.json`` from a model directory (or the file itself); the kind is recognised from its
        content. A missing file is a ``FileNotFoundError``, a bad one a ``ValueError``; both name the file.
        ``eos_token_id`` (the model config's) joins the end-of-sequence ids found by name."""
        hf = read_tokenizer(directory)
        try:
            return cls(hf, "byte" if _is_byte_tokenizer(hf) else "bpe", eos_token_id)
        except ValueError as exc:
            raise ValueError(f"{tokenizer_path(directory)}: {exc}") from None

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` atomically; returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, self.hf.to_str(pretty=True))
        return path

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added; ``decode(encode(text)) == text``.

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

    def detokenizer(self, skip_ids: Iterable[int] = ()) -> Detokenizer:
        """An incremental decoder for a stream of this tokenizer's ids (``skip_ids`` produce no text)."""
        return Detokenizer(self, skip_ids)

    def describe(self) -> str:
        return f"{self.kind} tokenizer, vocab {self.vocab_size}"


class Detokenizer:
    """Token ids in, text out as soon as it is complete UTF-8 (a token may end inside a character).

    Each token's bytes go through Python's incremental UTF-8 decoder: O(1) per token, whatever the length of
    the reply. ``flush`` releases an incomplete character at the end (as U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, skip_ids: Iterable[int] = ()) -> None:
        self._bytes = tokenizer._bytes
        self.skip_ids = frozenset(skip_ids)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if token_id in self.skip_ids:
            return ""
        return self._decoder.decode(self._bytes[token_id])

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def _token_bytes(hf: HFTokenizer, vocab_size: int) -> list[bytes]:
    """The bytes each id stands for. Byte-level vocabularies (a ``ByteLevel`` pre-tokenizer or decoder) map
    each character back to its byte; others (SentencePiece-style) spell bytes as ``<0xNN>`` and spaces as
    ``▁``; added tokens are their UTF-8 text."""
    spec = json.loads(hf.to_str())
    byte_level = _mentions(spec.get("decoder"), "ByteLevel") or _mentions(spec.get("pre_tokenizer"), "ByteLevel")
    added = {i: t.content for i, t in hf.get_added_tokens_decoder().items()}
    c2b = char_to_byte()
    pieces: list[bytes] = []
    for i in range(vocab_size):
        token = added.get(i) or hf.id_to_token(i)
        if token is None:
            raise ValueError(f"tokenizer has no token for id {i} (ids must be contiguous)")
        if i in added:
            pieces.append(token.encode("utf-8"))
        elif byte_level:
            try:
                pieces.append(bytes(c2b[c] for c in token))
            except KeyError:
                pieces.append(token.encode("utf-8"))
        elif m := _BYTE_FALLBACK.fullmatch(token):
            pieces.append(bytes([int(m.group(1), 16)]))
        else:
            pieces.append(token.replace("\u2581", " ").encode("utf-8"))
    return pieces


def _mentions(spec, kind: str) -> bool:
    """Whether a (possibly nested ``Sequence``) pre-tokenizer/decoder spec contains a step of type ``kind``."""
    if isinstance(spec, dict):
        return spec.get("type") == kind or any(_mentions(v, kind) for v in spec.values())
    if isinstance(spec, list):
        return any(_mentions(v, kind) for v in spec)
    return False


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
