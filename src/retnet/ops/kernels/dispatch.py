"""The ``mode="auto"`` hook: route CUDA inputs the kernels support to them, decline everything else.

Kept free of Triton imports so that ``import retnet.ops`` stays cheap; the kernels are imported on the
first CUDA call. Set ``RETNET_DISABLE_KERNELS=1`` to always use the PyTorch reference forms.
"""

from __future__ import annotations

import os

import torch

# Prompts up to this length without gradients run through the recurrent kernel (one launch, no chunk padding).
RECURRENT_MAX_LEN = 16
_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None) -> bool:
    """Whether the fused kernels handle these inputs (CUDA, one supported dtype, head sizes <= 256)."""
    if os.environ.get("RETNET_DISABLE_KERNELS", "0") == "1" or not q.is_cuda:
        return False
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _SUPPORTED:
        return False
    if initial_state is not None and initial_state.dtype == torch.float64:
        return False
    T, H = q.shape[1], q.shape[2]
    return q.shape[-1] <= 256 and v.shape[-1] <= 256 and T * H * max(q.shape[-1], v.shape[-1]) < 2**31


def fused_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    chunk_size: int,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Run retention with the fused kernels, or return ``None`` to let the PyTorch forms handle it."""
    del chunk_size  # the kernels pick their own chunk; every chunk length gives the same result
    if not supports(q, k, v, initial_state):
        return None
    from retnet.ops.kernels import chunk_retention, fused_recurrent_retention

    kwargs = dict(
        scale=scale, initial_state=initial_state, output_final_state=output_final_state, attention_mask=attention_mask
    )
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_decay, initial_state)
    )
    if q.shape[1] <= RECURRENT_MAX_LEN and not needs_grad:
        return fused_recurrent_retention(q, k, v, log_decay, **kwargs)
    return chunk_retention(q, k, v, log_decay, **kwargs)
