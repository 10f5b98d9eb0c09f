"""The lean training pieces (``retnet.ops.lean``) equal autograd through their plain expressions, keep less."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet.ops.lean import gated_linear, inv_rms, rms_norm


def _plain_rms(x, weight, eps):
    y = x * inv_rms(x.pow(2).mean(-1, keepdim=True), eps)
    return y * weight if weight is not None else y


def _plain_gated(gate, y, weight, heads, eps):
    if eps is not None:
        yh = y.unflatten(-1, (heads, -1))
        y = (yh * inv_rms(yh.pow(2).mean(-1, keepdim=True), eps)).flatten(-2)
    return F.linear(F.silu(gate) * y, weight)


def _grads(fn, inputs, seed=0):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * w).sum().backward()
    return out, [t.grad for t in leaves]


def _assert_same(lean, plain, inputs):
    o1, g1 = _grads(lean, inputs)
    o2, g2 = _grads(plain, inputs)
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _saved_bytes(fn, inputs) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn(*inputs)``, inputs excluded."""
    own = {t.untyped_storage().data_ptr() for t in inputs}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(seen.values())


dims = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 3), st.sampled_from([2, 4, 8]))


@settings(max_examples=25, deadline=None)
@given(dims, st.sampled_from([0.0, 1e-6, 0.1]), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_rms_norm_equals_autograd(shape, eps, affine, zero_row, seed):
    *lead, D = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, D, generator=gen, dtype=torch.float64)
    if zero_row:  # eps 0: a padded (all-zero) row maps to 0 with gradient 0, not NaN
        x[..., 0, :] = 0
    w = torch.randn(D, generator=gen, dtype=torch.float64) if affine else None
    inputs = [x.requires_grad_()] + ([w.requires_grad_()] if affine else [])

    def lean(x, *w):
        return rms_norm(x, w[0] if w else None, eps)

    def plain(x, *w):
        return _plain_rms(x, w[0] if w else None, eps)

    _assert_same(lean, plain, inputs)


@settings(max_examples=25, deadline=None)
@given(dims, st.integers(1, 5), st.sampled_from([None, 0.0, 1e-6]), st.integers(0, 2**16))
def test_gated_linear_equals_autograd(shape, out, eps, seed):
    B, T, H, D = shape
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64) * 3
    y = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64)
    if eps == 0.0:
        y[:, 0] = 0  # a padded step: its head norm is 0, its gradient 0
    w = torch.randn(out, H * D, generator=gen, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (gate, y, w)]
    _assert_same(
        lambda g, y, w: gated_linear(g, y, w, heads=H, eps=eps),
        lambda g, y, w: _plain_gated(g, y, w, H, eps),
        inputs,
    )


@pytest.mark.parametrize("eps", [None, 1e-6])
def test_gradcheck(eps):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6), (x, w))
    g = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    wo = torch.randn(5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, y, wo: gated_linear(g, y, wo, heads=2, eps=eps), (g, y, wo))


def test_partial_gradients():
    """Only the inputs that need a gradient get one (e.g. frozen weights)."""
    g = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 8, dtype=torch.float64)
    w = torch.randn(5, 8, dtype=torch.float64)
    gated_linear(g, y, w, heads=2, eps=1e-6).sum().backward()
    assert g.grad is not None and y.grad is None and w.grad is None
    x = torch.randn(3, 8, dtype=torch.float64)
    nw = torch.ones(8, dtype=torch.float64, requires_grad=True)
    rms_norm(x, nw, 1e-6).sum().backward()
    assert nw.grad is not None and x.grad is None


def test_keeps_inputs_only():
    """Beyond their inputs, the norm keeps a per-row factor and the gated projection its per-head factors."""
    flat = torch.randn(1, 64, 32, requires_grad=True)
    w = torch.ones(32, requires_grad=True)
    assert _saved_bytes(lambda x, w: rms_norm(x, w, 1e-6), [flat, w]) == 64 * 4
    assert _saved_bytes(lambda x, w: _plain_rms(x, w, 1e-6), [flat, w]) >= flat.nbytes
    gate = torch.randn(1, 64, 32, requires_grad=True)
    wo = torch.randn(8, 32, requires_grad=True)
    assert _saved_bytes(lambda g, y, w: gated_linear(g, y, w, heads=2, eps=1e-6), [gate, flat, wo]) == 64 * 2 * 4
    assert _saved_bytes(lambda g, y, w: _plain_gated(g, y, w, 2, 1e-6), [gate, flat, wo]) >= 3 * flat.nbytes


@settings(max_examples=25, deadline=None)
@given(dims, st.integers(1, 5), st.sampled_from([None, 0.0, 1e-6]), st.booleans(), st.integers(0, 2**16))
def test_inference_paths_equal_plain_math_and_leave_inputs(shape, out, eps, affine, seed):
    """Without gradients ``gated_linear`` forms its product in place in the swish's output and ``rms_norm``
    scales one copy: the same values as the plain expressions, and the callers' tensors unchanged."""
    B, T, H, D = shape
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64) * 3
    y = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64)
    if eps == 0.0:
        y[:, 0] = 0
    w = torch.randn(out, H * D, generator=gen, dtype=torch.float64)
    norm_w = torch.randn(H * D, generator=gen, dtype=torch.float64) if affine else None
    before = [t.clone() for t in (gate, y, w)]
    with torch.no_grad():
        got = gated_linear(gate, y, w, heads=H, eps=eps)
        normed = rms_norm(y, norm_w, eps if eps is not None else 1e-6)
    torch.testing.assert_close(got, _plain_gated(gate, y, w, H, eps), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(normed, _plain_rms(y, norm_w, eps if eps is not None else 1e-6), rtol=1e-12, atol=1e-12)
    for t, b in zip((gate, y, w), before):
        assert torch.equal(t, b)
