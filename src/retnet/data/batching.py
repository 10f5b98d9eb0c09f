"""Token streams cut into fixed-length windows, batched in a reproducible order that can be resumed.

A training step takes ``global_batch`` windows. Their order is a permutation per epoch drawn from
``seed`` and the epoch number (plus a per-epoch start offset), so the data position is just
``(epoch, cursor)``: saving it in a checkpoint and restoring it replays exactly the same batches. In
distributed runs every rank computes the same global order and takes its own slice of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from retnet.data.tokenizers import Tokenizer


def to_tensor(ids: list[int]) -> torch.Tensor:
    """Token ids as a compact 1-D tensor (int32; ids are < 2^31)."""
    return torch.tensor(ids, dtype=torch.int32)


def encode_tensor(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """``tokenizer.encode(text)`` as an int32 tensor (bytes are converted without a Python list)."""
    if tokenizer.kind == "byte":
        data = text.encode("utf-8")
        if not data:
            return torch.zeros(0, dtype=torch.int32)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int32)
    return to_tensor(tokenizer.encode(text))


def num_windows(num_tokens: int, seq_len: int, offset: int = 0) -> int:
    """How many windows of ``seq_len + 1`` tokens (inputs plus the next-token targets) fit after ``offset``."""
    return max(0, (num_tokens - 1 - offset) // seq_len)


@dataclass
class DataPosition:
    """Where the training stream stands: the epoch and how many windows of it have been used."""

    epoch: int = 0
    cursor: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    @classmethod
    def from_dict(cls, d: dict) -> DataPosition:
        return cls(epoch=int(d["epoch"]), cursor=int(d["cursor"]))


class WindowSampler:
    """Random windows of ``seq_len + 1`` tokens, a fresh permutation (and start offset) every epoch."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, seed: int, position: DataPosition | None = None) -> None:
        if tokens.dim() != 1:
            raise ValueError("tokens must be a 1-D tensor")
        if num_windows(tokens.numel(), seq_len) < 1:
            raise ValueError(f"{tokens.numel()} tokens are fewer than one sequence of {seq_len} + 1")
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.position = position or DataPosition()
        self._epoch_cache: tuple[int, int, torch.Tensor] | None = None

    def _epoch_order(self, epoch: int) -> tuple[int, torch.Tensor]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)  # any seed, any epoch
            offset = int(torch.randint(0, self.seq_len, (1,), generator=gen)) if epoch > 0 else 0
            if num_windows(self.tokens.numel(), self.seq_len, offset) < 1:
                offset = 0
            n = num_windows(self.tokens.numel(), self.seq_len, offset)
            self._epoch_cache = (epoch, offset, torch.randperm(n, generator=gen))
        return self._epoch_cache[1], self._epoch_cache[2]

    def next_batch(self, count: int) -> torch.Tensor:
        """The next ``count`` windows as a ``[count, seq_len + 1]`` int64 tensor; advances the position."""
        rows = []
        L = self.seq_len
        while len(rows) < count:
            offset, order = self._epoch_order(self.position.epoch)
            if self.position.cursor >= order.numel():
                self.position = DataPosition(self.position.epoch + 1, 0)
                continue
            start = offset + int(order[self.position.cursor]) * L
            rows.append(self.tokens[start : start + L + 1])
            self.position = DataPosition(self.position.epoch, self.position.cursor + 1)
        return torch.stack(rows).long()


def eval_windows(
    tokens: torch.Tensor, seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping windows of ``seq_len + 1`` tokens (overlapping by the one target token),
    in ``[b, seq_len + 1]`` batches: every token after the first is predicted exactly once."""
    n = num_windows(tokens.numel(), seq_len)
    if n < 1:
        raise ValueError(f"{tokens.numel()} tokens are fewer than one sequence of {seq_len} + 1")
    starts = list(range(0, n * seq_len, seq_len))
    for b, i in enumerate(range(0, len(starts), batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield torch.stack([tokens[s : s + seq_len + 1] for s in starts[i : i + batch_size]]).long()
