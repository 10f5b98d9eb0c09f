"""2-D retention over a grid of patches: ``o_n = sum_m (q_n . k_m) gamma^(|dx| + |dy|) v_m`` (Manhattan decay, RMT).

Three forms:

- ``parallel``: the full ``N x N`` decay matrix (N = height * width). O(N^2).
- ``separable``: exact and cheaper. The Manhattan decay factors, ``gamma^|dy| gamma^|dx|``, so
  ``O = sum_d q_d * ((Dy kron Dx) (k_d v^T))``: each key-value outer product is filtered along rows then
  columns with the 1-D symmetric decay, then contracted with q. O(N (H + W) Dk Dv); equal to ``parallel``.
- ``axial``: RMT's decomposed attention, row retention then column retention, each with its own q.k scores.
  Cheaper still (O(N (H + W) D)), but NOT equal to the full form in general: the product of a row score and a
  column score is not the full score. It equals the full form when every score is 1 (pure decay mixing);
  ``tests/ops/test_retention2d.py`` documents both facts.
"""

from __future__ import annotations

import torch

from retnet.ops.retention import _compute_dtype

MODES_2D = ("parallel", "separable", "axial")


def _check(q, k, v, log_decay, grid):
    for name, t in (("q", q), ("k", k), ("v", v), ("log_decay", log_decay)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k must be [B, N, H, Dk] and v [B, N, H, Dv]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if len(grid) != 2 or grid[0] * grid[1] != q.shape[1]:
        raise ValueError(f"grid (height, width) = {tuple(grid)} must multiply to N = {q.shape[1]}")
    if log_decay.shape != (q.shape[2],):
        raise ValueError(f"log_decay must have shape [H] = [{q.shape[2]}], got {tuple(log_decay.shape)}")
    if bool((log_decay > 0).any()):
        raise ValueError("log_decay must be <= 0")


def manhattan_log_decay(grid: tuple[int, int], log_decay: torch.Tensor) -> torch.Tensor:
    """``[H, N, N]`` log decay ``(|dy| + |dx|) * log gamma_h`` for row-major patches."""
    h, w = grid
    ys = torch.arange(h, device=log_decay.device).repeat_interleave(w)
    xs = torch.arange(w, device=log_decay.device).repeat(h)
    dist = (ys[:, None] - ys[None]).abs() + (xs[:, None] - xs[None]).abs()
    return dist.to(log_decay.dtype)[None] * log_decay[:, None, None]


def _axis_decay(n: int, log_decay: torch.Tensor) -> torch.Tensor:
    """``[H, n, n]`` 1-D symmetric decay ``gamma^|i - j|``."""
    i = torch.arange(n, device=log_decay.device)
    return torch.exp((i[:, None] - i[None]).abs().to(log_decay.dtype)[None] * log_decay[:, None, None])


def retention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    grid: tuple[int, int],
    *,
    mode: str = "separable",
) -> torch.Tensor:
    """2-D retention over ``grid = (height, width)`` row-major patches.

    q, k: ``[B, N, H, Dk]``; v: ``[B, N, H, Dv]``; log_decay ``[H]``; returns ``[B, N, H, Dv]``.
    """
    _check(q, k, v, log_decay, grid)
    if mode not in MODES_2D:
        raise ValueError(f"mode must be one of {MODES_2D}, got {mode!r}")
    cd = _compute_dtype(q, k, v)
    B, N, H, Dk = q.shape
    Dv = v.shape[-1]
    gh, gw = grid
    with torch.autocast(device_type=q.device.type, enabled=False):
        q_, k_, v_, g = q.to(cd), k.to(cd), v.to(cd), log_decay.to(cd)
        if mode == "parallel":
            decay = torch.exp(manhattan_log_decay(grid, g))  # [H, N, N]
            qh, kh, vh = (x.transpose(1, 2) for x in (q_, k_, v_))
            o = torch.matmul(torch.matmul(qh, kh.transpose(-1, -2)) * decay, vh).transpose(1, 2)
        elif mode == "separable":
            dy, dx = _axis_decay(gh, g), _axis_decay(gw, g)  # [H, gh, gh], [H, gw, gw]
            kv = k_[..., :, None] * v_[..., None, :]  # [B, N, H, Dk, Dv]
            kv = kv.reshape(B, gh, gw, H, Dk * Dv)
            kv = torch.einsum("hxz,byzhe->byxhe", dx, kv)  # filter along each row
            kv = torch.einsum("hyz,bzxhe->byxhe", dy, kv)  # then along each column
            kv = kv.reshape(B, N, H, Dk, Dv)
            o = torch.einsum("bnhk,bnhkv->bnhv", q_, kv)
        else:
            dy, dx = _axis_decay(gh, g), _axis_decay(gw, g)
            qg, kg, vg = (x.reshape(B, gh, gw, H, -1) for x in (q_, k_, v_))
            scores = torch.einsum("byxhd,byzhd->byhxz", qg, kg) * dx[None, None]
            rows = torch.einsum("byhxz,byzhe->byxhe", scores, vg)
            scores = torch.einsum("byxhd,bzxhd->bxhyz", qg, kg) * dy[None, None]
            o = torch.einsum("bxhyz,bzxhe->byxhe", scores, rows).reshape(B, N, H, Dv)
    return o.to(v.dtype)
