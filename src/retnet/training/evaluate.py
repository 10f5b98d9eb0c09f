"""Validation loss per token and bits per byte (comparable across tokenizers)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from retnet.data.batching import eval_windows


@dataclass(frozen=True)
class EvalResult:
    """Summed negative log-likelihood over ``tokens`` predicted tokens that stand for ``bytes`` bytes."""

    nll: float
    tokens: int
    bytes: int

    @property
    def loss(self) -> float:
        """Mean loss in nats per token."""
        return self.nll / max(1, self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(1, self.bytes)

    def to_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: torch.Tensor,
    byte_lengths: torch.Tensor,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    mode: str = "auto",
    autocast_dtype: torch.dtype | None = None,
    shard: tuple[int, int] = (0, 1),
) -> EvalResult:
    """Sum the loss of every token predicted in consecutive windows of ``tokens``.

    ``byte_lengths[i]`` is how many bytes token ``i`` stands for. ``shard=(rank, world)`` evaluates every
    ``world``-th batch (sum the results over ranks).
    """
    was_training = model.training
    model.eval()
    nll, count, nbytes = 0.0, 0, 0
    rank, world = shard
    device = torch.device(device)
    byte_lengths = byte_lengths.to(device)
    for b, batch in enumerate(eval_windows(tokens, seq_len, batch_size, max_batches)):
        if b % world != rank:
            continue
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(batch[:, :-1], mode=mode).logits
        targets = batch[:, 1:]
        losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        nll += float(losses)
        count += targets.numel()
        nbytes += int(byte_lengths[targets].sum())
    model.train(was_training)
    return EvalResult(nll=nll, tokens=count, bytes=nbytes)
