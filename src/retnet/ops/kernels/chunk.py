"""``chunk_retention``: the fused chunkwise Triton kernels behind a ``torch.autograd.Function``.

Same contract as :func:`retnet.ops.retention` (``[B, T, H, D]`` layout, ``scale`` on ``q``, float32
state in and out, left padding through ``attention_mask``). Gradients flow to ``q``, ``k``, ``v``, the
log decay (gated ``[B, T, H]`` or fixed ``[H]``) and the initial state.

The log-decay gradient uses the identity ``dL/dB_t = q_t . dq_t - k_t . dk_t`` for the cumulative log decay
``B_t`` (plus ``<dS_T, S_T>`` at the last step, through the final state), then a reverse cumulative sum
over time; it runs in PyTorch after the kernels.
"""

from __future__ import annotations

import torch
import triton

from retnet.ops.dispatch import KERNEL_DTYPES, KERNEL_MAX_HEAD_DIM, fits_int32_offsets
from retnet.ops.kernels.chunk_kernels import CONFIGS, chunk_bwd_kernel, chunk_fwd_kernel
from retnet.ops.kernels.config import chunk_slice, fixed_launch_options, pow2
from retnet.ops.validation import validate_retention_args


def _precision(dtype: torch.dtype) -> str:
    """Exact float32 products for float32 inputs (no TF32); bf16/fp16 tiles ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _chunk_len(chunk_size: int | None) -> int:
    """The interpreter's chunk length (on a GPU the autotuner picks 32 or 64 and this is not used)."""
    if chunk_size is not None:
        if chunk_size < 16 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk_size must be a power of two >= 16 for the fused kernels, got {chunk_size}")
        return chunk_size
    return 16


class ChunkRetentionFunction(torch.autograd.Function):
    """Forward and backward of chunkwise retention with the fused kernels."""

    @staticmethod
    def forward(ctx, q, k, v, g, s0, mask, scale: float, chunk: int, slice_size: int | None):
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        BK, BV = pow2(Dk), chunk_slice(Dk, Dv, slice_size)
        o = torch.empty_like(v)
        sT = torch.empty(B, H, Dk, Dv, device=q.device, dtype=torch.float32)
        grid = (triton.cdiv(Dv, BV), B * H)
        chunk_fwd_kernel[grid](
            q, k, v, g, mask if mask is not None else q, s0 if s0 is not None else sT, o, sT, scale, T,
            H=H, DK=Dk, DV=Dv, BK=BK, BV=BV,
            GATED=g.dim() == 3, HAS_MASK=mask is not None, HAS_S0=s0 is not None, PREC=_precision(q.dtype),
            **fixed_launch_options(CONFIGS, C=chunk),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, g, s0, mask, sT)
        ctx.scale, ctx.chunk, ctx.slice_size = scale, chunk, slice_size
        return o, sT

    @staticmethod
    def backward(ctx, do, dsT):
        q, k, v, g, s0, mask, sT = ctx.saved_tensors
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        do = do.contiguous()
        # dq / dk in float32 when the log-decay gradient (q . dq - k . dk, which cancels) is needed.
        gdt = torch.float32 if ctx.needs_input_grad[3] else q.dtype
        dq = torch.empty(q.shape, device=q.device, dtype=gdt)
        dk = torch.empty(k.shape, device=q.device, dtype=gdt)
        dv = torch.empty_like(v)
        need_ds0 = s0 is not None and ctx.needs_input_grad[4]
        ds0 = torch.empty(B, H, Dk, Dv, device=q.device, dtype=torch.float32) if need_ds0 else None
        if dsT is not None:
            dsT = dsT.float().contiguous()
        BKs = chunk_slice(Dv, Dk, ctx.slice_size)  # dq, dk: key slice x all value columns
        BVs = chunk_slice(Dk, Dv, ctx.slice_size)  # dv: all key rows x value slice
        for part, (BK, BV, n) in enumerate(
            ((BKs, pow2(Dv), triton.cdiv(Dk, BKs)),) * 2 + ((pow2(Dk), BVs, triton.cdiv(Dv, BVs)),)
        ):
            chunk_bwd_kernel[(n, B * H)](
                q, k, v, g, mask if mask is not None else q, s0 if s0 is not None else sT, do,
                dsT if dsT is not None else sT, dq, dk, dv, ds0 if ds0 is not None else sT, ctx.scale, T,
                H=H, DK=Dk, DV=Dv, BK=BK, BV=BV,
                GATED=g.dim() == 3, HAS_MASK=mask is not None, HAS_S0=s0 is not None, HAS_DST=dsT is not None,
                STORE_DS0=need_ds0, PREC=_precision(q.dtype), PART=part,
                **fixed_launch_options(CONFIGS, C=ctx.chunk),
            )  # fmt: skip
        dg = None
        if ctx.needs_input_grad[3]:
            dg = _log_decay_grad(q, k, dq, dk, g, mask, sT, dsT)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg, (ds0.to(s0.dtype) if need_ds0 else None), None, None, None, None


def _log_decay_grad(q, k, dq, dk, g, mask, sT, dsT) -> torch.Tensor:
    """Gradient of the log decay from ``dL/dB_t = q_t . dq_t - k_t . dk_t`` (+ final-state term)."""
    dB = (q.float() * dq.float()).sum(-1) - (k.float() * dk.float()).sum(-1)  # [B, T, H]
    if dsT is not None:
        dB[:, -1] += (dsT * sT).sum((-1, -2))
    dg = dB.flip(1).cumsum(1).flip(1)  # dL/dg_s = sum_{t >= s} dL/dB_t
    if mask is not None:
        dg = dg * mask[:, :, None]
    if g.dim() == 1:
        dg = dg.sum((0, 1))
    return dg.to(g.dtype)


def chunk_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    slice_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise retention with the fused Triton kernels (any T, Dk and Dv <= 256).

    Arguments as in :func:`retnet.ops.retention`; ``q``, ``k``, ``v`` share one dtype (float32, float16 or
    bfloat16). ``chunk_size`` is the chunk length under the Triton interpreter (power of two >= 16, default
    16); on a GPU the autotuner picks 32 or 64 per kernel (results do not depend on it). ``slice_size`` is
    the width of the state slice per program (default from the head sizes).
    Returns ``(o, final_state)`` with ``o`` in the dtype of ``v`` and a float32 final state (or ``None``).
    """
    _check_kernel_args(q, k, v, log_decay, initial_state, attention_mask)
    chunk = _chunk_len(chunk_size)
    mask = None
    if attention_mask is not None:
        mask = attention_mask.to(torch.float32).contiguous()
    s0 = None if initial_state is None else initial_state.contiguous()
    o, sT = ChunkRetentionFunction.apply(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        log_decay.float().contiguous(),
        s0,
        mask,
        float(1.0 if scale is None else scale),
        chunk,
        slice_size,
    )
    return o, (sT if output_final_state else None)


def _check_kernel_args(q, k, v, log_decay, initial_state, attention_mask) -> None:
    """The operator's argument checks (values only for CPU tensors: no check waits on the device), then the
    kernels' own limits: one dtype among float32/float16/bfloat16, heads up to 256 wide, 32-bit offsets."""
    validate_retention_args(q, k, v, log_decay, "auto", 64, None, initial_state, attention_mask)
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"q, k and v must share one dtype among float32, float16, bfloat16 for the fused kernels, "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.shape[-1] > KERNEL_MAX_HEAD_DIM or v.shape[-1] > KERNEL_MAX_HEAD_DIM:
        raise ValueError(
            f"the fused kernels support Dk and Dv up to {KERNEL_MAX_HEAD_DIM}, got Dk={q.shape[-1]}, Dv={v.shape[-1]}"
        )
    if not fits_int32_offsets(q.shape[1], q.shape[2], max(q.shape[-1], v.shape[-1])):
        raise ValueError(f"T * H * D must stay below 2^31 for the kernels' 32-bit offsets, got shape {tuple(q.shape)}")
