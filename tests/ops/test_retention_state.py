"""``retention_state``: the final state of ``retention`` without its outputs (a prefill's unread steps)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import retnet.ops.chunkwise as chunkwise
from retnet.ops import retention, retention_state
from tests.ops.helpers import make_inputs, rel_err
from tests.ops.test_retention_equivalence import shapes


def _inputs(p):
    pad = [(p["seed"] >> b) % (p["T"] + 1) for b in range(p["B"])] if p["padded"] else None
    return make_inputs(
        p["B"], p["T"], p["H"], p["Dk"], p["Dv"], gated=p["gated"], with_state=p["with_state"], pad=pad, seed=p["seed"]
    )


@given(shapes)
def test_equals_the_final_state_of_every_form_float64(p):
    q, k, v, g, s0, mask = _inputs(p)
    _, ref = retention(q, k, v, g, mode="recurrent", initial_state=s0, output_final_state=True, attention_mask=mask)
    state = retention_state(k, v, g, initial_state=s0, attention_mask=mask)
    assert state.dtype == torch.float64 and state.shape == ref.shape
    assert rel_err(state, ref) < 1e-10


@pytest.mark.parametrize("gated", [False, True])
def test_many_segments_equal_one(gated, monkeypatch):
    """Long inputs run in segments of a few MiB (here a few steps each); the cumulative decays restart per segment."""
    q, k, v, g, s0, mask = make_inputs(2, 300, 3, 8, 5, gated=gated, with_state=True, pad=[7, 0], seed=1)
    one = retention_state(k, v, g, initial_state=s0, attention_mask=mask)
    monkeypatch.setattr(chunkwise, "CPU_SEGMENT_BYTES", 2 * 3 * 8 * 8 * 11)  # 11 steps a segment
    many = retention_state(k, v, g, initial_state=s0, attention_mask=mask)
    _, ref = retention(q, k, v, g, mode="recurrent", initial_state=s0, output_final_state=True, attention_mask=mask)
    assert rel_err(one, ref) < 1e-10 and rel_err(many, ref) < 1e-10


def test_leaves_the_initial_state_alone_and_starts_from_zeros_without_one():
    q, k, v, g, s0, _ = make_inputs(1, 20, 2, 4, 3, with_state=True, seed=2)
    before = s0.clone()
    retention_state(k, v, g, initial_state=s0)
    assert torch.equal(s0, before)
    _, ref = retention(q, k, v, g, mode="parallel", output_final_state=True)
    assert rel_err(retention_state(k, v, g), ref) < 1e-10


def test_low_precision_inputs_give_a_float32_state():
    q, k, v, g, _, _ = make_inputs(1, 40, 2, 8, 8, dtype=torch.bfloat16, seed=4)
    state = retention_state(k, v, g)
    _, ref = retention(q, k, v, g, mode="recurrent", output_final_state=True)
    assert state.dtype == torch.float32
    assert rel_err(state, ref) < 1e-5


def test_bad_arguments_are_named():
    _, k, v, g, _, _ = make_inputs(1, 6, 2, 4, 3)
    with pytest.raises(ValueError, match="k must be a tensor of shape"):
        retention_state(k[0], v, g)
    with pytest.raises(ValueError, match="v must have shape"):
        retention_state(k, v[:, :5], g)
    with pytest.raises(ValueError, match="log_decay must have shape"):
        retention_state(k, v, g[:1])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        retention_state(k, v, g, initial_state=torch.zeros(1, 2, 4, 4, dtype=k.dtype))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        retention_state(k, v, g, attention_mask=torch.ones(1, 5))


def test_gradients_equal_those_through_retention():
    """Not the inference path's purpose, but a state with gradients must get the right ones."""
    q, k, v, g, s0, _ = make_inputs(2, 30, 2, 4, 3, gated=True, with_state=True, seed=5)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (k, v, g, s0)]
        state = fn(*leaves)
        w = torch.linspace(-1, 1, state.numel(), dtype=state.dtype).reshape(state.shape)
        (state * w).sum().backward()
        return [t.grad for t in leaves]

    ref = grads(
        lambda k_, v_, g_, s_: retention(q, k_, v_, g_, mode="recurrent", initial_state=s_, output_final_state=True)[1]
    )
    for a, b in zip(grads(lambda k_, v_, g_, s_: retention_state(k_, v_, g_, initial_state=s_)), ref):
        assert rel_err(a, b) < 1e-10
