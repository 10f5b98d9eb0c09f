"""Normalisations: RMSNorm for the residual stream and the per-head output norm of retention."""

from __future__ import annotations

import torch
from torch import nn

from retnet.ops.lean import inv_rms as _inv_rms
from retnet.ops.lean import mean_square, rms_norm


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in float32 (at least).

    In training the backward keeps ``x`` only, not the normalised copy (:func:`retnet.ops.lean.rms_norm`)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class HeadNorm(nn.Module):
    """Normalises each head's output ``[..., H, Dv]`` separately (scale invariant per head).

    ``kind="rms"``: RMSNorm without affine (the official code); ``"group"``: GroupNorm with H groups as in the
    paper (per-head mean/variance, affine over all ``H * Dv`` channels); ``"layer"``: per-head LayerNorm
    without affine.
    """

    KINDS = ("rms", "group", "layer")

    def __init__(self, num_heads: int, head_dim: int, kind: str = "rms", eps: float = 1e-6) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"head norm must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.eps = kind, eps
        if kind == "group":
            self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
            self.bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        of = o.float() if o.dtype in (torch.float16, torch.bfloat16) else o
        if self.kind == "rms":
            y = of * _inv_rms(mean_square(of), self.eps)
        else:
            mean = of.mean(-1, keepdim=True)
            var = (of - mean).pow(2).mean(-1, keepdim=True)
            y = (of - mean) * _inv_rms(var, self.eps)
            if self.kind == "group":
                y = y * self.weight.to(y.dtype) + self.bias.to(y.dtype)
        return y.to(o.dtype)
