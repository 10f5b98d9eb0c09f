"""The retention operator: one function, three mathematically equal forms, two backends.

``o_n = sum_{m <= n} (scale * q_n . k_m) exp(G(n, m)) v_m`` with ``G(n, m) = sum_{i=m+1..n} log_decay_i``,
plus the contribution of an optional initial state (docs/retention.md). Which form and which backend run
is decided by :func:`retnet.ops.dispatch.choose`.
"""

from __future__ import annotations

import torch

from retnet.ops.chunkwise import chunkwise_retention, chunkwise_state
from retnet.ops.dispatch import (
    PARALLEL_MAX_LEN,
    choose,
    interpreting,
    kernel_supports,
    kernels_disabled,
    pick_mode,
    triton_installed,
)
from retnet.ops.parallel import parallel_retention
from retnet.ops.recurrent import recurrent_retention
from retnet.ops.validation import validate_retention_args

__all__ = ["retention", "retention_state", "pick_mode", "PARALLEL_MAX_LEN"]


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: low-precision inputs accumulate in float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    mode: str = "auto",
    backend: str = "auto",
    chunk_size: int = 64,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    attention_mask: torch.Tensor | None = None,
    check_values: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Retention over a sequence, with decay in float32 log space and float32 (or float64) accumulation.

    Args:
        q, k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]``.
        log_decay: ``[H]`` fixed per-head ``log gamma`` or ``[B, T, H]`` gated (data-dependent); all ``<= 0``.
        mode: the math form: ``"parallel"``, ``"chunkwise"``, ``"recurrent"`` or ``"auto"``.
        backend: ``"torch"``, ``"triton"`` or ``"auto"`` (Triton for supported CUDA inputs); see
            :mod:`retnet.ops.dispatch`.
        chunk_size: chunk length of the torch chunkwise form (the kernels choose their own).
        scale: multiplies ``q`` (default 1: the layers scale ``k``).
        initial_state: ``[B, H, Dk, Dv]`` state to continue from (e.g. after a prefill).
        output_final_state: also return the ``[B, H, Dk, Dv]`` state after the last step.
        attention_mask: ``[B, T]`` with 1 for tokens and 0 for padding. Padded steps add nothing, leave the
            state unchanged (no decay) and output zeros.
        check_values: also check values (``log_decay <= 0``, mask in {0, 1}); default: only for CPU tensors,
            since on an accelerator each check waits for the device.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, Dv]`` in the dtype of ``v``; ``final_state`` is float32
        (float64 for float64 inputs), or ``None`` unless ``output_final_state``.
    """
    validate_retention_args(
        q, k, v, log_decay, mode, chunk_size, scale, initial_state, attention_mask, backend, check_values
    )
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_decay, initial_state)
    )
    backend, form = choose(
        mode,
        backend,
        device_type=q.device.type,
        seq_len=q.shape[1],
        chunk_size=chunk_size,
        needs_grad=needs_grad,
        kernel_ok=kernel_supports(q, k, v, initial_state),
        triton_available=triton_installed(),
        interpret=interpreting(),
        kernels_off=kernels_disabled(),
    )
    kwargs = dict(
        scale=scale, initial_state=initial_state, output_final_state=output_final_state, attention_mask=attention_mask
    )
    if backend == "triton":
        from retnet.ops import kernels

        kernel = kernels.fused_recurrent_retention if form == "recurrent" else kernels.chunk_retention
        return kernel(q, k, v, log_decay, **kwargs)
    return _torch_retention(form, q, k, v, log_decay, chunk_size, **kwargs)


def _torch_retention(
    form: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    chunk_size: int,
    *,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The PyTorch forms: inputs cast to the compute dtype, padding applied, then one of the three forms."""
    out_dtype = v.dtype
    cd = _compute_dtype(q, k, v, *(t for t in (initial_state,) if t is not None))
    with torch.autocast(device_type=q.device.type, enabled=False):
        q_, k_, v_ = q.to(cd), k.to(cd), v.to(cd)
        if scale is not None and scale != 1:
            q_ = q_ * scale
        g = log_decay.to(cd)
        state = initial_state.to(cd) if initial_state is not None else None
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()
            (q_, k_, v_), g = _without_padding(mask, g, q_, k_, v_)

        if form == "parallel":
            o, final = parallel_retention(q_, k_, v_, g, state, output_final_state)
        elif form == "recurrent":
            o, final = recurrent_retention(q_, k_, v_, g, state, output_final_state)
        else:
            o, final = chunkwise_retention(q_, k_, v_, g, state, output_final_state, chunk_size)
        if mask is not None:
            o = torch.where(mask[:, :, None, None], o, 0.0)
    return o.to(out_dtype), final


def _without_padding(mask: torch.Tensor, g: torch.Tensor, *xs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``[B, T, H, D]`` tensors zeroed at padded steps (``mask`` False) and the log decay ``[B, T, H]`` with zeros
    there (a padded step neither adds to nor decays the state). ``where``, not multiplication: whatever a padded
    step holds (even NaN or inf) must not leak."""
    keep = mask[:, :, None, None]
    if g.dim() == 1:
        g = g.expand(*mask.shape, -1)
    return [torch.where(keep, x, 0.0) for x in xs], torch.where(mask[:, :, None], g, 0.0)


def retention_state(
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    check_values: bool | None = None,
) -> torch.Tensor:
    """The final state of :func:`retention` over ``k, v`` without its outputs: what a prefill needs for the steps
    whose outputs nobody reads (all but the last of a prompt). No query enters it, so it costs one matrix product
    per batch row and head per segment instead of the chunkwise form's two per chunk, and the queries of those
    steps need not be computed at all.

    Args as in :func:`retention` (``k: [B, T, H, Dk]``, ``v: [B, T, H, Dv]``, ``log_decay: [H]`` or ``[B, T, H]``,
    ``initial_state``, ``attention_mask``). Returns ``[B, H, Dk, Dv]`` in float32 (float64 for float64 inputs),
    equal to ``retention(q, k, v, log_decay, output_final_state=True, ...)[1]`` for any ``q``. PyTorch on every
    device (one product per head and segment already runs at the device's matrix speed).
    """
    if not isinstance(k, torch.Tensor) or k.dim() != 4:
        raise ValueError(f"k must be a tensor of shape [B, T, H, Dk], got {getattr(k, 'shape', type(k).__name__)}")
    # k stands in for the queries: the checks of q then apply to k
    validate_retention_args(k, k, v, log_decay, "auto", 1, None, initial_state, attention_mask, "torch", check_values)
    cd = _compute_dtype(k, v, *(t for t in (initial_state,) if t is not None))
    with torch.autocast(device_type=k.device.type, enabled=False):
        k_, v_, g = k.to(cd), v.to(cd), log_decay.to(cd)
        if attention_mask is not None:
            (k_, v_), g = _without_padding(attention_mask.bool(), g, k_, v_)
        return chunkwise_state(k_, v_, g, initial_state.to(cd) if initial_state is not None else None)
