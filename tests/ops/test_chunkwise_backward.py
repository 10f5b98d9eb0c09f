"""The chunkwise form's own backward (``ChunkwiseRetention``) equals autograd through the other forms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet.ops import retention
from retnet.ops.chunkwise import ChunkwiseRetention, chunkwise_retention
from retnet.ops.parallel import parallel_retention
from tests.ops.helpers import make_inputs, rel_err

NAMES = ("o", "final_state", "q", "k", "v", "log_decay", "initial_state")


def _run(fn, q, k, v, g, s0, mask, *, final: bool, grad_g: bool, seed: int):
    """Outputs and gradients of a weighted loss on ``o`` (and the final state when ``final``)."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (q, k, v, g, s0)]
    if not grad_g:
        leaves[3].requires_grad_(False)
    o, s = fn(*leaves, mask, final)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    if final:
        loss = loss + (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
    loss.backward()
    return [o, s] + [None if t is None else t.grad for t in leaves]


def _form(mode: str, chunk: int = 64):
    def fn(q, k, v, g, s0, mask, final):
        return retention(
            q, k, v, g, mode=mode, chunk_size=chunk, initial_state=s0, output_final_state=final, attention_mask=mask
        )

    return fn


@settings(deadline=None, max_examples=60)
@given(
    B=st.integers(1, 2),
    T=st.integers(1, 40),
    H=st.integers(1, 3),
    Dk=st.integers(1, 5),
    Dv=st.integers(1, 5),
    chunk=st.sampled_from([1, 2, 3, 4, 8, 16]),
    gated=st.booleans(),
    with_state=st.booleans(),
    final=st.booleans(),
    padded=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_backward_equals_autograd_of_parallel_float64(B, T, H, Dk, Dv, chunk, gated, with_state, final, padded, seed):
    pad = [seed % (T + 1), 0][:B] if padded else None
    q, k, v, g, s0, mask = make_inputs(B, T, H, Dk, Dv, gated=gated, with_state=with_state, pad=pad, seed=seed)
    got = _run(_form("chunkwise", chunk), q, k, v, g, s0, mask, final=final, grad_g=gated, seed=seed)
    ref = _run(_form("parallel"), q, k, v, g, s0, mask, final=final, grad_g=gated, seed=seed)
    for name, a, b in zip(NAMES, got, ref):
        assert (a is None) == (b is None), name
        if a is not None:
            assert rel_err(a, b) < 1e-10, name


@settings(deadline=None, max_examples=30)
@given(
    T=st.integers(1, 50),
    chunk=st.sampled_from([1, 3, 4, 8]),
    per_segment=st.sampled_from([1, 2, 3, None]),
    gated=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fixed_decay_gradient_and_segments(T, chunk, per_segment, gated, seed):
    """The gradient of a fixed ``[H]`` log decay (no padding expands it) and any segment length."""
    q, k, v, g, s0, _ = make_inputs(2, T, 2, 3, 4, gated=gated, with_state=True, seed=seed)

    def chunked(q, k, v, g, s0, mask, final):
        return chunkwise_retention(q, k, v, g, s0, final, chunk, chunks_per_segment=per_segment)

    def parallel(q, k, v, g, s0, mask, final):
        return parallel_retention(q, k, v, g, s0, final)

    got = _run(chunked, q, k, v, g, s0, None, final=True, grad_g=True, seed=seed)
    ref = _run(parallel, q, k, v, g, s0, None, final=True, grad_g=True, seed=seed)
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("per_segment", [1, None])
def test_gradcheck(gated, per_segment):
    q, k, v, g, s0, _ = make_inputs(1, 7, 2, 3, 2, gated=gated, with_state=True, seed=2)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, g, s0)]

    def f(q, k, v, g, s0):
        return ChunkwiseRetention.apply(q, k, v, g, s0, 3, per_segment)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_only_outputs_used_and_no_state_given():
    """``o`` alone (final state unused, gradient None) and no initial state: ``initial_state`` gets none."""
    q, k, v, g, _, _ = make_inputs(1, 13, 2, 3, 2, gated=True, seed=4)
    got = _run(_form("chunkwise", 4), q, k, v, g, None, None, final=False, grad_g=True, seed=1)
    ref = _run(_form("recurrent"), q, k, v, g, None, None, final=False, grad_g=True, seed=1)
    for name, a, b in zip(NAMES, got, ref):
        if name in ("final_state", "initial_state"):
            assert a is None and b is None
        else:
            assert rel_err(a, b) < 1e-10, name


def test_saves_inputs_and_segment_states_only():
    """What autograd keeps: q, k, v, the decay, the final state and one state per segment, nothing [T, C]."""
    B, T, H, Dk, Dv, C = 1, 64, 2, 4, 3, 4
    q, k, v, g, s0, _ = make_inputs(B, T, H, Dk, Dv, gated=True, with_state=True, seed=5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, s0)]
    o, _ = ChunkwiseRetention.apply(*leaves, C, 4)  # 16 chunks in 4 segments
    saved = o.grad_fn.saved_tensors
    sizes = sorted(t.numel() for t in saved)
    state = B * H * Dk * Dv
    assert len(saved) == 4 + 1 + 4
    assert sizes.count(state) == 5  # the final state and the 4 segment states
    assert sum(sizes) == q.numel() + k.numel() + v.numel() + g.numel() + 5 * state
