"""Gradients agree across forms and pass gradcheck."""

from __future__ import annotations

import pytest
import torch

from retnet.ops import retention
from tests.ops.helpers import make_inputs, rel_err

MODES = ("parallel", "chunkwise", "recurrent")


def _grads(mode, gated, pad):
    q, k, v, g, s0, mask = make_inputs(2, 19, 2, 4, 3, gated=gated, with_state=True, pad=pad, seed=7)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, s0)]
    o, s = retention(
        *leaves[:4], mode=mode, chunk_size=4, initial_state=leaves[4], output_final_state=True, attention_mask=mask
    )
    w_o = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)
    w_s = torch.linspace(1, -1, s.numel(), dtype=s.dtype).reshape(s.shape)
    ((o * w_o).sum() + (s * w_s).sum()).backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("pad", [None, [3, 0]])
def test_gradients_agree_across_forms(gated, pad):
    ref = _grads("recurrent", gated, pad)
    for m in ("parallel", "chunkwise"):
        got = _grads(m, gated, pad)
        for name, a, b in zip("q k v log_decay initial_state".split(), got, ref):
            assert rel_err(a, b) < 1e-10, (m, name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gated", [False, True])
def test_gradcheck(mode, gated):
    q, k, v, g, s0, mask = make_inputs(1, 6, 2, 3, 2, gated=gated, with_state=True, pad=[1], seed=1)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, g, s0)]

    def f(q, k, v, g, s0):
        o, s = retention(
            q, k, v, g, mode=mode, chunk_size=4, initial_state=s0, output_final_state=True, attention_mask=mask
        )
        return o, s

    if not gated:  # log decay stays fixed and positive perturbations would leave the valid domain
        inputs[3].requires_grad_(False)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)
