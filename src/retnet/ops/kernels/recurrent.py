"""``fused_recurrent_retention`` and ``fused_recurrent_step``: the recurrent Triton kernel for inference.

Forward only (decoding and short prompts under ``torch.no_grad``); training uses :func:`chunk_retention`.
"""

from __future__ import annotations

import torch
import triton

from retnet.ops.kernels.chunk import _check_kernel_args
from retnet.ops.kernels.config import INTERPRET, pow2, recurrent_block_v
from retnet.ops.kernels.recurrent_kernels import recurrent_fwd_kernel


def _launch(q, k, v, log_decay, scale, s0, sT, mask) -> torch.Tensor:
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    BK, BV = pow2(Dk), recurrent_block_v(Dk, Dv)
    o = torch.empty_like(v)
    g = log_decay if log_decay.dtype == torch.float32 and log_decay.is_contiguous() else log_decay.float().contiguous()
    m = None if mask is None else mask.to(torch.float32).contiguous()
    scale = float(1.0 if scale is None else scale)
    recurrent_fwd_kernel[(triton.cdiv(Dv, BV), B * H)](
        q, k, v, g, m if m is not None else g, s0 if s0 is not None else sT, o, sT, scale, T,
        H=H, DK=Dk, DV=Dv, BK=BK, BV=BV,
        GATED=g.dim() == 3, HAS_MASK=m is not None, HAS_S0=s0 is not None,
        num_warps=1 if INTERPRET else 4,
    )  # fmt: skip
    return o


def _no_grad_check(*tensors: torch.Tensor | None) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "the fused recurrent kernel is forward-only: call it under torch.no_grad(), or use chunk_retention"
        )


def fused_recurrent_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recurrent retention over ``T`` steps in one kernel (arguments and results as :func:`retention`)."""
    _check_kernel_args(q, k, v, log_decay, initial_state, attention_mask)
    _no_grad_check(q, k, v, log_decay, initial_state)
    B, T, H, Dk = q.shape
    s0 = None if initial_state is None else initial_state.float().contiguous()
    sT = torch.empty(B, H, Dk, v.shape[-1], device=q.device, dtype=torch.float32)
    o = _launch(q.contiguous(), k.contiguous(), v.contiguous(), log_decay, scale, s0, sT, attention_mask)
    return o, (sT if output_final_state else None)


def fused_recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode: advance ``state`` (float32, contiguous, ``[B, H, Dk, Dv]``) **in place** by the ``T`` given steps.

    ``q, k, v`` are ``[B, T, H, D]`` (usually ``T = 1``). Returns ``(o, state)``, the same state object.
    """
    _check_kernel_args(q, k, v, log_decay, state, attention_mask)
    _no_grad_check(q, k, v, log_decay, state)
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"state must be a contiguous float32 tensor for in-place updates, got {state.dtype}")
    o = _launch(q.contiguous(), k.contiguous(), v.contiguous(), log_decay, scale, state, state, attention_mask)
    return o, state
