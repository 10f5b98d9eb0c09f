"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

Sampling is total: every accepted temperature, top-k and top-p gives a valid distribution (a temperature so
small that ``logits / temperature`` overflows is the greedy limit, and top-p always keeps the most likely
token). Logits a model should never produce (NaN, +inf, or a row without a finite value) raise
:class:`NonFiniteLogitsError` naming the rows, instead of a NaN distribution reaching ``torch.multinomial``.
"""

from __future__ import annotations

import math

import torch


class NonFiniteLogitsError(ValueError):
    """The model produced NaN or +inf logits (or a row with no finite logit): nothing can be sampled."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"the model produced non-finite logits (NaN or inf) in batch row(s) {rows}")
        self.rows = rows


def invalid_rows(logits: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` -> ``[B]`` bool: rows with a NaN or +inf logit, or with no finite logit at all (-inf is a
    legitimate mask value; a row of nothing but -inf is not)."""
    bad = torch.isnan(logits) | torch.isposinf(logits)
    return bad.any(-1) | ~torch.isfinite(logits).any(-1)


def check_logits(logits: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLogitsError` if any row of ``[B, V]`` logits cannot be sampled from."""
    bad = invalid_rows(logits)
    if bool(bad.any()):
        raise NonFiniteLogitsError(bad.nonzero().flatten().tolist())


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject parameters outside the sampler's domain (NaN and infinities included), naming the argument."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest set with probability >= top_p to -inf.

    The most likely token always stays, so at least one logit of a valid row remains finite."""
    check_sampling(0.0, top_k, top_p)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p. The first token always stays: a top_p
        # below the dtype's smallest number rounds to 0, and ``0 >= 0`` would drop it too.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def scale_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``, or its limit where that overflows (tiny temperatures): the maximum stays
    finite and every other logit goes to -inf, which is greedy with ties shared."""
    scaled = logits / temperature
    if bool((torch.isinf(scaled) & torch.isfinite(logits)).any()):
        shifted = logits - logits.amax(-1, keepdim=True)
        scaled = torch.where(shifted == 0, torch.zeros_like(shifted), shifted / temperature)
    return scaled


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[B, V]`` logits -> ``[B]`` token ids. ``temperature == 0`` is greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    check_logits(logits)
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(scale_logits(logits, temperature), top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
