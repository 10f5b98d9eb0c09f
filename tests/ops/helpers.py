"""Shared helpers for the retention-op tests."""

from __future__ import annotations

import torch

from retnet.ops import official_log_decay


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max-norm relative error of ``a`` against reference ``b``."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-300))


def make_inputs(B, T, H, Dk, Dv, *, gated=False, dtype=torch.float64, with_state=False, pad=None, seed=0):
    """Random q, k, v, log decay, optional initial state and left-padding mask (``pad[b]`` pads of row b)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, Dk, generator=gen, dtype=torch.float64)
    k = torch.randn(B, T, H, Dk, generator=gen, dtype=torch.float64) * Dk**-0.5
    v = torch.randn(B, T, H, Dv, generator=gen, dtype=torch.float64)
    if gated:
        log_decay = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=torch.float64) + 3) / 4
    else:
        log_decay = official_log_decay(H, dtype=torch.float64)
    state = torch.randn(B, H, Dk, Dv, generator=gen, dtype=torch.float64) if with_state else None
    mask = None
    if pad is not None:
        mask = torch.ones(B, T, dtype=torch.long)
        for b, p in enumerate(pad):
            mask[b, : min(p, T)] = 0
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(q), cast(k), cast(v), log_decay.to(torch.float64), (None if state is None else state), mask
