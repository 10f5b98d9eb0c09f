"""The fused chunkwise kernels (Triton interpreter) match the PyTorch reference, forward and backward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet.ops.kernels import chunk_retention
from tests.ops.helpers import rel_err
from tests.ops.kernels.helpers import kernel_inputs, reference, run_with_grads


def _compare(inputs, tol, **kw):
    ref_kw = {k: v for k, v in kw.items() if k in ("scale", "grad_decay")}
    o, s, grads = run_with_grads(chunk_retention, *inputs, **kw)
    o_ref, s_ref, grads_ref = reference(*inputs, **ref_kw)
    assert o.dtype == inputs[2].dtype and s.dtype == torch.float32
    assert rel_err(o, o_ref) < tol, "o"
    assert rel_err(s, s_ref) < tol, "final_state"
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert grads[name].dtype == (inputs[0].dtype if name in "qkv" else torch.float32), name
        assert rel_err(grads[name], grads_ref[name]) < tol, name


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("pad", [None, [5, 0]])
@pytest.mark.parametrize("state", [False, True])
def test_fp32_matches_reference(gated, pad, state):
    # T = 37: two full chunks of 16 and a partial one; Dv = 20 is not a power of two.
    _compare(kernel_inputs(2, 37, 2, 8, 20, gated=gated, state=state, pad=pad), 1e-5)


@settings(max_examples=8)
@given(
    T=st.integers(1, 40),
    Dk=st.integers(1, 24),
    Dv=st.integers(1, 24),
    gated=st.booleans(),
    chunk=st.sampled_from([16, 32]),
)
def test_fp32_shapes(T, Dk, Dv, gated, chunk):
    _compare(kernel_inputs(1, T, 2, Dk, Dv, gated=gated, state=True, seed=T), 1e-5, chunk_size=chunk)


def test_several_value_slices_and_large_heads():
    # slice_size = 16 splits Dv = 40 (forward, dv) and Dk = 24 (dq, dk) over several programs each.
    _compare(kernel_inputs(1, 21, 1, 24, 40, gated=True, state=True, pad=[3]), 1e-5, slice_size=16)
    # Dk = Dv = 256, the largest head size supported.
    _compare(kernel_inputs(1, 18, 1, 256, 256, state=True), 1e-5)


def test_fp16_matches_reference():
    inputs = kernel_inputs(2, 45, 2, 16, 16, gated=True, state=True, pad=[4, 0], dtype=torch.float16)
    _compare(inputs, 5e-3)
    _compare(kernel_inputs(1, 33, 2, 32, 16, dtype=torch.float16), 5e-3, grad_decay=False)


def test_strong_decay_stays_finite():
    # exp(bC - b) past the end of a partial chunk would overflow for a fixed log decay of -30.
    q, k, v, g, s0, mask = kernel_inputs(1, 19, 2, 8, 8, state=True)
    g = torch.tensor([-30.0, -1e-9])
    _compare((q, k, v, g, s0, mask), 1e-5)
    # Gated: very negative log decays only underflow to zero. The true decay gradient is ~1e-35 here and
    # q . dq - k . dk cancels to float32 rounding of O(1) terms, so that one is checked in absolute terms.
    q, k, v, _, s0, mask = kernel_inputs(1, 19, 2, 8, 8, state=True, gated=True)
    g = torch.full((1, 19, 2), -80.0)
    _compare((q, k, v, g, s0, mask), 1e-5, grad_decay=False)
    dg = run_with_grads(chunk_retention, q, k, v, g, s0, mask)[2]["log_decay"]
    dg_ref = reference(q, k, v, g, s0, mask)[2]["log_decay"]
    assert float((dg.double() - dg_ref).abs().max()) < 1e-5


def test_fixed_decay_without_gradient_and_defaults():
    inputs = kernel_inputs(2, 20, 2, 8, 8)
    _compare(inputs, 1e-5, grad_decay=False)
    q, k, v, g, _, _ = inputs
    o, s = chunk_retention(q, k, v, g)
    assert s is None and o.shape == v.shape


def test_bad_arguments_are_named():
    q, k, v, g, _, _ = kernel_inputs(1, 4, 1, 8, 8)
    with pytest.raises(ValueError, match="Dk"):
        chunk_retention(torch.zeros(1, 4, 1, 260), torch.zeros(1, 4, 1, 260), v, g)
    with pytest.raises(TypeError, match="dtype"):
        chunk_retention(q.half(), k, v, g)
    with pytest.raises(TypeError, match="dtype"):
        chunk_retention(q.double(), k.double(), v.double(), g)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_retention(q, k, v, g, chunk_size=24)
    with pytest.raises(ValueError, match="slice_size"):
        chunk_retention(q, k, v, g, slice_size=20)
    with pytest.raises(ValueError, match="log_decay"):
        chunk_retention(q, k, v, torch.ones(1))
    big = torch.zeros(1, 1, 1, 1).expand(1, 2**22, 32, 16)  # T * H * D = 2^31: no memory behind it
    with pytest.raises(ValueError, match="2\\^31"):
        chunk_retention(big, big, big, torch.full((32,), -0.1))
