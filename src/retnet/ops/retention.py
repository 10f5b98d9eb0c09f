"""The retention operator: one function, three mathematically equal forms.

``o_n = sum_{m <= n} (scale * q_n . k_m) exp(G(n, m)) v_m`` with ``G(n, m) = sum_{i=m+1..n} log_decay_i``,
plus the contribution of an optional initial state. See ``shared/retnet-spec.md`` section 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from retnet.ops.chunkwise import chunkwise_retention
from retnet.ops.parallel import parallel_retention
from retnet.ops.recurrent import recurrent_retention
from retnet.ops.validation import validate_retention_args

# Above this length the quadratic parallel form loses to chunkwise on the CPU: docs/benchmarks/retention.md
# ("Where mode=auto should switch", chunk 64, B=1, H=8, 64x128): at T=192 parallel ties chunkwise for
# forward+backward (28.5 vs 27.8 ms) and wins forward-only (7.9 vs 12.1 ms); at T=256 chunkwise wins both
# (30 vs 51 ms, 13.5 vs 19.1 ms). It was 256 before that measurement.
PARALLEL_MAX_LEN = 192

# Optional fused implementation for accelerators; set by retnet.ops.triton when Triton and a GPU are present.
# Called with the same arguments as `retention` (after validation); returns None to decline the shape.
_fused_impl: Callable[..., tuple[torch.Tensor, torch.Tensor | None] | None] | None = None


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: low-precision inputs accumulate in float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def pick_mode(T: int, device: torch.device, chunk_size: int) -> str:
    """The form ``mode="auto"`` uses: recurrent for one step, parallel for short inputs, else chunkwise."""
    if T == 1:
        return "recurrent"
    if T <= max(PARALLEL_MAX_LEN, chunk_size):
        return "parallel"
    return "chunkwise"


def retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    mode: str = "auto",
    chunk_size: int = 64,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Retention over a sequence, with decay in float32 log space and float32 (or float64) accumulation.

    Args:
        q, k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]``.
        log_decay: ``[H]`` fixed per-head ``log gamma`` or ``[B, T, H]`` gated (data-dependent); all ``<= 0``.
        mode: ``"parallel"``, ``"chunkwise"``, ``"recurrent"`` or ``"auto"``.
        chunk_size: chunk length for the chunkwise form.
        scale: multiplies ``q`` (default 1: the layers scale ``k``).
        initial_state: ``[B, H, Dk, Dv]`` state to continue from (e.g. after a prefill).
        output_final_state: also return the ``[B, H, Dk, Dv]`` state after the last step.
        attention_mask: ``[B, T]`` with 1 for tokens and 0 for padding. Padded steps add nothing, leave the
            state unchanged (no decay) and output zeros.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, Dv]`` in the dtype of ``v``; ``final_state`` is float32
        (float64 for float64 inputs), or ``None`` unless ``output_final_state``.
    """
    validate_retention_args(q, k, v, log_decay, mode, chunk_size, scale, initial_state, attention_mask)
    out_dtype = v.dtype
    T = q.shape[1]
    if mode == "auto":
        if _fused_impl is not None:
            fused = _fused_impl(
                q,
                k,
                v,
                log_decay,
                chunk_size=chunk_size,
                scale=scale,
                initial_state=initial_state,
                output_final_state=output_final_state,
                attention_mask=attention_mask,
            )
            if fused is not None:
                return fused
        mode = pick_mode(T, q.device, chunk_size)

    cd = _compute_dtype(q, k, v, *(t for t in (initial_state,) if t is not None))
    with torch.autocast(device_type=q.device.type, enabled=False):
        q_, k_, v_ = q.to(cd), k.to(cd), v.to(cd)
        if scale is not None and scale != 1:
            q_ = q_ * scale
        g = log_decay.to(cd)
        state = initial_state.to(cd) if initial_state is not None else None
        mask = None
        if attention_mask is not None:
            # where, not multiplication: whatever a padded step holds (even NaN or inf) must not leak.
            mask = attention_mask.bool()
            keep = mask[:, :, None, None]
            k_, v_, q_ = (torch.where(keep, x, 0.0) for x in (k_, v_, q_))
            if g.dim() == 1:
                g = g.expand(q.shape[0], T, -1)
            g = torch.where(mask[:, :, None], g, 0.0)

        if mode == "parallel":
            o, final = parallel_retention(q_, k_, v_, g, state, output_final_state)
        elif mode == "recurrent":
            o, final = recurrent_retention(q_, k_, v_, g, state, output_final_state)
        else:
            o, final = chunkwise_retention(q_, k_, v_, g, state, output_final_state, chunk_size)
        if mask is not None:
            o = torch.where(mask[:, :, None, None], o, 0.0)
    return o.to(out_dtype), final
