"""Bidirectional retention (LION-style encoder retention): ``o_n = sum_m (q_n . k_m) gamma^|n - m| v_m``.

The decay matrix is symmetric, ``D = L + L^T - I`` with ``L`` the causal decay matrix, so the linear-time form
runs causal retention forward, causal retention over the reversed sequence, and subtracts the diagonal
(counted by both passes). Padding (any pattern) is excluded: padded tokens add nothing, distances count only
real tokens, and padded positions output zeros - the same convention as :func:`retnet.ops.retention`.
"""

from __future__ import annotations

import torch

from retnet.ops.dispatch import PARALLEL_MAX_LEN
from retnet.ops.retention import _compute_dtype, retention
from retnet.ops.validation import validate_retention_args

BIDIRECTIONAL_MODES = ("auto", "parallel", "chunkwise", "recurrent")


def _parallel(q, k, v, log_decay, mask):
    """O(T^2) reference: explicit symmetric decay matrix."""
    T = q.shape[1]
    if mask is None:
        pos = torch.arange(T, device=q.device, dtype=log_decay.dtype)[None].expand(q.shape[0], -1)
    else:
        pos = mask.to(log_decay.dtype).cumsum(1)
    dist = (pos[:, :, None] - pos[:, None, :]).abs()  # [B, T, T], in real tokens
    decay = torch.exp(dist[:, None] * log_decay[None, :, None, None])  # [B, H, T, T]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    if mask is not None:
        kh = kh * mask[:, None, :, None].to(kh.dtype)
    o = torch.matmul(torch.matmul(qh, kh.transpose(-1, -2)) * decay, vh).transpose(1, 2)
    return o


def bidirectional_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    mode: str = "auto",
    chunk_size: int = 64,
    scale: float | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional retention with fixed per-head decay.

    Args:
        q, k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]``; log_decay: ``[H]`` (``<= 0``).
        mode: ``"parallel"`` (O(T^2)), ``"chunkwise"`` or ``"recurrent"`` (two causal passes, linear in T),
            or ``"auto"`` (parallel for short inputs, else chunkwise).
        attention_mask: ``[B, T]``, 1 for tokens, 0 for padding.

    Returns:
        ``o``: ``[B, T, H, Dv]`` in the dtype of ``v``.
    """
    validate_retention_args(q, k, v, log_decay, mode, chunk_size, scale, None, attention_mask)
    if log_decay.dim() != 1:
        raise ValueError(f"log_decay must have shape [H] for bidirectional retention, got {tuple(log_decay.shape)}")
    T = q.shape[1]
    if mode == "auto":
        mode = "parallel" if T <= PARALLEL_MAX_LEN else "chunkwise"
    if mode == "parallel":
        cd = _compute_dtype(q, k, v)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q_ = q.to(cd) * (1.0 if scale is None else scale)
            o = _parallel(q_, k.to(cd), v.to(cd), log_decay.to(cd), attention_mask)
            if attention_mask is not None:
                o = o * attention_mask.to(cd)[:, :, None, None]
        return o.to(v.dtype)

    kw = dict(mode=mode, chunk_size=chunk_size, scale=scale)
    forward, _ = retention(q, k, v, log_decay, attention_mask=attention_mask, **kw)
    flip = lambda x: None if x is None else x.flip(1)  # noqa: E731
    backward, _ = retention(flip(q), flip(k), flip(v), log_decay, attention_mask=flip(attention_mask), **kw)
    cd = _compute_dtype(q, k, v)
    with torch.autocast(device_type=q.device.type, enabled=False):
        diag = (q.to(cd) * k.to(cd)).sum(-1, keepdim=True) * v.to(cd) * (1.0 if scale is None else scale)
        if attention_mask is not None:
            diag = diag * attention_mask.to(cd)[:, :, None, None]
        o = forward.to(cd) + backward.flip(1).to(cd) - diag
    return o.to(v.dtype)
