"""Per-head decay schedules for fixed-decay retention, returned as log decays (``log gamma <= 0``).

Both are computed in float64 with ``log1p`` and returned in float32, so heads whose gamma rounds to 1.0 in
low precision (``1 - 2^-9`` in bf16, ``1 - 2^-25`` in float32) keep their true, slightly negative log decay.
"""

from __future__ import annotations

import math

import torch


def official_log_decay(num_heads: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``log(1 - 2^(-5-h))`` for h = 0..H-1: the schedule of the official torchscale code."""
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    h = torch.arange(num_heads, dtype=torch.float64, device="cpu")
    return torch.log1p(-torch.exp2(-5.0 - h)).to(dtype=dtype, device=device or "cpu")


def paper_log_decay(num_heads: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``log(1 - exp(linspace(log 1/32, log 1/512, H)))``: the schedule in the paper's text."""
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    rates = torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), num_heads, dtype=torch.float64, device="cpu"))
    return torch.log1p(-rates).to(dtype=dtype, device=device or "cpu")


def gated_log_decay(gate_logits: torch.Tensor, temperature: float = 16.0) -> torch.Tensor:
    """Gated retention's data-dependent decay ``log sigmoid(x W_gamma) / tau`` (YOCO), in float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.nn.functional.logsigmoid(gate_logits.float()) / temperature


def decay_weight_sum(log_decay: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``sum_{i<n} gamma^i = (1 - gamma^n) / (1 - gamma)`` per head, ``n = counts``: ``[H], [...] -> [..., H]``.

    The row sums of the parallel decay matrix (and torchscale's recurrent ``scale``); ``n`` for ``gamma == 1``.
    Computed in float64.
    """
    g = log_decay.to(torch.float64)
    n = counts.to(torch.float64)[..., None]
    ratio = torch.expm1(n * g) / torch.expm1(g).where(g != 0, torch.ones_like(g))
    return torch.where(g != 0, ratio, n.expand_as(ratio))
