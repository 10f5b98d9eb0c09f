"""Training-path pieces with hand-written backwards that save their inputs only.

Autograd through the plain expressions keeps the elementwise intermediates of a block for the backward pass
(the norms' normalised copies, the swish of the gates, the gated products before the output projections).
These functions keep only what the gradient cannot do without and recompute the cheap elementwise rest in
backward; no matmul is recomputed. The layers use them when a forward records gradients
(docs/benchmarks/train_memory.md).

- :func:`rms_norm`: ``x / sqrt(mean(x^2) + eps) * weight``; saves ``x`` and the per-row factor.
- :func:`gated_linear`: ``linear(silu(gate) * n(y), weight)`` with ``n`` the identity (SwiGLU's output
  projection) or a per-head RMS norm (retention's head norm, swish gate and output projection); saves
  ``gate``, ``y``, ``weight`` and the per-head factors, not the normalised, gated or swished copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """``mean(x^2)`` over the last dim, ``[..., 1]``: one reduction, no squared copy of ``x``."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square().div(x.shape[-1])


def inv_rms(mean_square: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(mean_square + eps)``; with ``eps == 0`` an all-zero vector (a padded step) maps to 0, not NaN."""
    if eps > 0:
        return torch.rsqrt(mean_square + eps)
    nonzero = mean_square > 0
    # rsqrt of a safe value, so the backward of where never multiplies 0 by inf.
    return torch.where(nonzero, torch.rsqrt(torch.where(nonzero, mean_square, 1.0)), 0.0)


def _rms_backward_(y_hat: torch.Tensor, inv: torch.Tensor, d_hat: torch.Tensor) -> torch.Tensor:
    """Gradient through ``y_hat = y * inv(y)`` over the last dim: ``inv * (d - y_hat * mean(y_hat * d))``,
    computed in place in ``d_hat`` (a temporary of the caller), so a backward holds fewer full-size tensors.

    With ``inv == 0`` (eps 0, zero row) the gradient is 0, as for the constant :func:`inv_rms` gives there."""
    mean = (y_hat * d_hat).mean(-1, keepdim=True)
    return d_hat.addcmul_(y_hat, mean, value=-1).mul_(inv)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        inv = inv_rms(mean_square(x), eps)
        ctx.save_for_backward(x, inv, weight)
        y = x * inv
        return y * weight if weight is not None else y

    @staticmethod
    def backward(ctx, dy):
        x, inv, weight = ctx.saved_tensors
        y_hat = x * inv
        d_weight = None
        if weight is not None and ctx.needs_input_grad[1]:
            d_weight = (dy * y_hat).reshape(-1, dy.shape[-1]).sum(0)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _rms_backward_(y_hat, inv, dy * weight if weight is not None else dy.clone())
        return dx, d_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim (``weight`` optional), same dtype as ``x``.

    Through :class:`_RMSNorm` for float32/float64 inputs that record gradients, outside autocast."""
    if lean_applies(x, weight):
        return _RMSNorm.apply(x, weight, eps)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    inv = inv_rms(mean_square(xf), eps)
    if weight is None:
        return (xf * inv).to(x.dtype)
    return torch.mul(xf, weight.to(xf.dtype)).mul_(inv).to(x.dtype)


def fusable(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether these functions' own computation applies: float32/float64 tensors of one dtype, no autocast."""
    if x.dtype not in (torch.float32, torch.float64):
        return False
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return False
    return all(t is None or t.dtype == x.dtype for t in others)


def _records_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lean_applies(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether the hand-written backward applies: gradients recorded, float32/float64 of one dtype, no autocast."""
    return _records_grad(x, *others) and fusable(x, *others)


class _GatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, y, weight, heads: int, eps: float | None):
        inv = None
        y_hat = y
        if eps is not None:
            y_hat, inv = _head_norm(y, heads, eps)
        ctx.save_for_backward(gate, y, weight, inv)
        ctx.heads, ctx.eps = heads, eps
        return F.linear(F.silu(gate) * y_hat, weight)

    @staticmethod
    def backward(ctx, d_out):
        gate, y, weight, inv = ctx.saved_tensors
        heads = ctx.heads
        # Each full-size temporary is freed or reused as soon as possible: a backward holding many of them
        # raises the step's peak and fragments the heap.
        y_hat = y if inv is None else (y.unflatten(-1, (heads, -1)) * inv).flatten(-2)
        s = torch.sigmoid(gate)
        swish = gate * s
        d_weight = None
        if ctx.needs_input_grad[2]:
            p = swish * y_hat
            d_weight = d_out.reshape(-1, d_out.shape[-1]).T @ p.reshape(-1, p.shape[-1])
            del p
        dp = d_out @ weight
        d_y = None
        if ctx.needs_input_grad[1]:
            d_y = dp * swish
            if inv is not None:
                d_y = _rms_backward_(y_hat.unflatten(-1, (heads, -1)), inv, d_y.unflatten(-1, (heads, -1))).flatten(-2)
        del swish
        d_gate = None
        if ctx.needs_input_grad[0]:
            d_silu = torch.sub(1, s).mul_(gate).add_(1).mul_(s)  # silu'(gate) = s (1 + gate (1 - s))
            d_gate = dp.mul_(y_hat).mul_(d_silu)
        return d_gate, d_y, d_weight, None, None


def _head_factors(y: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """The per-head RMS norm factors ``[..., heads, 1]`` of ``y: [..., heads * D]``."""
    return inv_rms(mean_square(y.unflatten(-1, (heads, -1))), eps)


def _head_norm(y: torch.Tensor, heads: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMS norm of ``y: [..., heads * D]`` and the per-head factors ``[..., heads, 1]``."""
    inv = _head_factors(y, heads, eps)
    return (y.unflatten(-1, (heads, -1)) * inv).flatten(-2), inv


def gated_linear(
    gate: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, *, heads: int = 1, eps: float | None = None
) -> torch.Tensor:
    """``linear(silu(gate) * n(y), weight)`` with ``gate, y: [..., F]``, ``weight: [out, F]``.

    ``n`` is the identity for ``eps=None``, else an RMS norm without affine over each of ``heads`` equal
    groups of ``y``'s last dim. Through :class:`_GatedLinear` for float32/float64 inputs of one dtype that
    record gradients, outside autocast; without gradients the product is formed in place in the swish's
    output (one full-size temporary: the inference path); otherwise plainly (same math)."""
    if lean_applies(gate, y, weight):
        return _GatedLinear.apply(gate, y, weight, heads, eps)
    if fusable(gate, y, weight) and not _records_grad(gate, y, weight):
        h = F.silu(gate).mul_(y)
        if eps is not None:
            h.unflatten(-1, (heads, -1)).mul_(_head_factors(y, heads, eps))
        return F.linear(h, weight)
    y_hat = y if eps is None else _head_norm(y, heads, eps)[0]
    return F.linear(F.silu(gate) * y_hat, weight)
