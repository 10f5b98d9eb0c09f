"""Parallel form: ``O = (Q K^T * D) V`` with an explicitly masked decay matrix. O(T^2) time and memory.

Inputs are already prepared by :func:`retnet.ops.retention`: compute dtype, ``q`` scaled, padded steps
zeroed in ``k`` and in ``g``. ``g`` is ``[H]`` (fixed decay, no padding) or ``[B, T, H]``.
"""

from __future__ import annotations

import torch


def _log_decay_matrix(g: torch.Tensor, cum: torch.Tensor, T: int) -> torch.Tensor:
    """``L[b, h, n, m] = G(n, m)`` for ``m <= n`` and ``-inf`` above the diagonal (so ``exp(L)`` is exactly 0)."""
    idx = torch.arange(T, device=cum.device)
    causal = idx[:, None] >= idx[None, :]
    if g.dim() == 1:  # fixed decay: exact (n - m) * g, no cancellation
        dist = (idx[:, None] - idx[None, :]).to(g.dtype)
        L = dist[None] * g[:, None, None]  # [H, T, T]
        return torch.where(causal, L, float("-inf"))[None]
    cum_h = cum.transpose(1, 2)  # [B, H, T]
    L = cum_h[..., :, None] - cum_h[..., None, :]
    return torch.where(causal, L, float("-inf"))


def parallel_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, T, H, _ = q.shape
    if g.dim() == 1:
        cum = (torch.arange(1, T + 1, device=g.device, dtype=g.dtype)[:, None] * g[None, :])[None]  # [1, T, H]
    else:
        cum = torch.cumsum(g, dim=1)  # [B, T, H]: log decay from the start through step n
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    decay = torch.exp(_log_decay_matrix(g, cum, T))
    o = torch.matmul(torch.matmul(qh, kh.transpose(-1, -2)) * decay, vh)
    cum_h = cum.transpose(1, 2)  # [B|1, H, T]
    if initial_state is not None:
        o = o + torch.matmul(qh * torch.exp(cum_h)[..., None], initial_state)
    final_state = None
    if output_final_state:
        total = cum_h[..., -1:]  # [B|1, H, 1]
        final_state = torch.matmul((kh * torch.exp(total - cum_h)[..., None]).transpose(-1, -2), vh)
        if initial_state is not None:
            final_state = final_state + torch.exp(total)[..., None] * initial_state
        final_state = final_state.expand(B, *final_state.shape[1:])
    return o.transpose(1, 2), final_state
