"""The model's tokenizer (``tokenizer.json``, HF ``tokenizers`` format) and incremental detokenisation."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from retnet.models.directory import CheckpointError, read_tokenizer

# Special tokens that end a document or a turn, if the tokenizer has them.
EOS_CANDIDATES = ("<|endoftext|>", "<|end|>", "</s>", "<eos>", "<|eos|>", "<|im_end|>")


class TokenizerError(ValueError):
    """A missing or unreadable tokenizer file; the message names it."""


class ServingTokenizer:
    """Text <-> token ids without added special tokens, plus the ids that end generation."""

    def __init__(self, tokenizer: Tokenizer, eos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        ids = {tokenizer.token_to_id(t) for t in EOS_CANDIDATES} - {None}
        if eos_token_id is not None:
            ids.add(int(eos_token_id))
        self.eos_token_ids: frozenset[int] = frozenset(ids)

    @classmethod
    def from_dir(cls, model_dir: str | Path, eos_token_id: int | None = None) -> ServingTokenizer:
        try:
            tok = read_tokenizer(model_dir)
        except CheckpointError as exc:
            raise TokenizerError(str(exc)) from None
        return cls(tok, eos_token_id)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, holding back incomplete UTF-8 sequences.

    Decodes a short window (``ids[prefix:]``) each step, so the cost per token does not grow with the reply.
    """

    def __init__(self, tokenizer: ServingTokenizer, skip_ids: frozenset[int] = frozenset()) -> None:
        self.tokenizer, self.skip_ids = tokenizer, skip_ids
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids[:read] already turned into text

    def push(self, token: int) -> str:
        if token in self.skip_ids:
            return ""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]
