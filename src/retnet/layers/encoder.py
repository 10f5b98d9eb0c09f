"""Non-causal retention layers: bidirectional retention for sequences and 2-D retention for patch grids.

They reuse :class:`~retnet.layers.retention.MultiScaleRetention`'s projections, head norm and gate; only the
retention operator changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retnet.layers.retention import MultiScaleRetention
from retnet.layers.rotary import apply_rotary
from retnet.ops import bidirectional_retention, retention_2d


class BidirectionalRetention(MultiScaleRetention):
    """``o_n = sum_m (q_n . k_m) gamma^|n-m| v_m`` with the RetNet rotation (relative phases) on q and k."""

    def forward(self, x, sin, cos, *, attention_mask=None, mode: str = "auto") -> torch.Tensor:
        B, T, _ = x.shape
        H = self.num_heads
        q = apply_rotary(self.q_proj(x).view(B, T, H, self.key_dim), sin, cos)
        k = apply_rotary(self.k_proj(x).view(B, T, H, self.key_dim), sin, cos, self.key_dim**-0.5)
        v = self.v_proj(x).view(B, T, H, self.head_dim)
        o = bidirectional_retention(
            q, k, v, self.decay(x), mode=mode, chunk_size=self.chunk_size, attention_mask=attention_mask
        )
        o = self.head_norm(o).reshape(B, T, H * self.head_dim)
        return self.out_proj(F.silu(self.g_proj(x)) * o)


class Retention2D(MultiScaleRetention):
    """2-D retention over a ``(height, width)`` grid with Manhattan-distance decay (no rotation)."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int], *, mode: str = "parallel") -> torch.Tensor:
        B, N, _ = x.shape
        H = self.num_heads
        q = self.q_proj(x).view(B, N, H, self.key_dim)
        k = self.k_proj(x).view(B, N, H, self.key_dim) * self.key_dim**-0.5
        v = self.v_proj(x).view(B, N, H, self.head_dim)
        o = retention_2d(q, k, v, self.decay(x), grid, mode=mode)
        o = self.head_norm(o).reshape(B, N, H * self.head_dim)
        return self.out_proj(F.silu(self.g_proj(x)) * o)
