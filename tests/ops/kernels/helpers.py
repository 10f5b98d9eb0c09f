"""Shared helpers for the kernel tests: inputs, a float64 reference and gradient collection."""

from __future__ import annotations

import torch

from retnet.ops import retention
from tests.ops.helpers import make_inputs


def kernel_inputs(B, T, H, Dk, Dv, *, gated=False, state=False, pad=None, dtype=torch.float32, seed=0):
    """Inputs in ``dtype`` (log decay and state in float32), as the kernels take them."""
    q, k, v, g, s0, mask = make_inputs(B, T, H, Dk, Dv, gated=gated, dtype=dtype, with_state=state, pad=pad, seed=seed)
    return q, k, v, g.float(), (None if s0 is None else s0.float()), mask


def run_with_grads(fn, q, k, v, g, s0, mask, *, scale=0.75, grad_decay=True, **kw):
    """Forward ``fn``, backward a fixed random weighting of ``o`` and the final state; return outputs + grads."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (q, k, v, g, s0)]
    if not grad_decay:
        leaves[3].requires_grad_(False)
    o, sT = fn(*leaves[:4], scale=scale, initial_state=leaves[4], output_final_state=True, attention_mask=mask, **kw)
    gen = torch.Generator().manual_seed(123)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    w_s = torch.randn(sT.shape, generator=gen, dtype=torch.float64)
    ((o.double() * w_o).sum() + (sT.double() * w_s).sum()).backward()
    grads = {n: t.grad for n, t in zip(("q", "k", "v", "log_decay", "initial_state"), leaves) if t is not None}
    if not grad_decay:
        grads.pop("log_decay")
    return o.detach(), sT.detach(), grads


def reference(q, k, v, g, s0, mask, **kw):
    """The PyTorch parallel form in float64 on the same (already rounded) inputs."""

    def fn(q, k, v, g, **kw2):
        s = kw2.pop("initial_state")
        return retention(q.double(), k.double(), v.double(), g.double(), mode="parallel", initial_state=s, **kw2)

    return run_with_grads(fn, q, k, v, g, None if s0 is None else s0.double(), mask, **kw)
