"""The three forms agree on outputs and final state (float64, 1e-10), for any shape, decay, state and padding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from retnet.ops import retention
from tests.ops.helpers import make_inputs, rel_err

MODES = ("parallel", "chunkwise", "recurrent")

shapes = st.fixed_dictionaries(
    {
        "B": st.integers(1, 3),
        "T": st.one_of(st.sampled_from([1, 2, 3, 5, 7, 13, 31, 37, 64, 65, 67]), st.integers(1, 80)),
        "H": st.integers(1, 4),
        "Dk": st.sampled_from([1, 2, 4, 8, 16]),
        "Dv": st.sampled_from([1, 3, 4, 8, 16]),
        "chunk": st.sampled_from([1, 7, 16, 64, 128]),
        "gated": st.booleans(),
        "with_state": st.booleans(),
        "padded": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def _run_all(p):
    pad = [(p["seed"] >> b) % (p["T"] + 1) for b in range(p["B"])] if p["padded"] else None
    q, k, v, g, s0, mask = make_inputs(
        p["B"], p["T"], p["H"], p["Dk"], p["Dv"], gated=p["gated"], with_state=p["with_state"], pad=pad, seed=p["seed"]
    )
    return {
        m: retention(
            q, k, v, g, mode=m, chunk_size=p["chunk"], initial_state=s0, output_final_state=True, attention_mask=mask
        )
        for m in MODES
    }


@given(shapes)
def test_forms_agree_float64(p):
    out = _run_all(p)
    o_ref, s_ref = out["recurrent"]
    for m in ("parallel", "chunkwise"):
        o, s = out[m]
        assert o.shape == o_ref.shape and o.dtype == torch.float64
        assert rel_err(o, o_ref) < 1e-10, m
        assert rel_err(s, s_ref) < 1e-10, m


@given(shapes, st.data())
def test_prefill_then_decode_equals_full_pass(p, data):
    T = p["T"]
    if T < 2:
        T = p["T"] = 2
    split = data.draw(st.integers(1, T - 1))
    prefill_mode = data.draw(st.sampled_from(["parallel", "chunkwise"]))
    pad = [(p["seed"] >> b) % (T + 1) for b in range(p["B"])] if p["padded"] else None
    q, k, v, g, s0, mask = make_inputs(
        p["B"], T, p["H"], p["Dk"], p["Dv"], gated=p["gated"], with_state=p["with_state"], pad=pad, seed=p["seed"]
    )
    o_full, s_full = retention(
        q, k, v, g, mode="parallel", initial_state=s0, output_final_state=True, attention_mask=mask
    )
    gsl = (lambda a, b: g) if g.dim() == 1 else (lambda a, b: g[:, a:b])
    msl = (lambda a, b: None) if mask is None else (lambda a, b: mask[:, a:b])
    o1, state = retention(
        q[:, :split],
        k[:, :split],
        v[:, :split],
        gsl(0, split),
        mode=prefill_mode,
        chunk_size=p["chunk"],
        initial_state=s0,
        output_final_state=True,
        attention_mask=msl(0, split),
    )
    outs = [o1]
    for t in range(split, T):
        o_t, state = retention(
            q[:, t : t + 1],
            k[:, t : t + 1],
            v[:, t : t + 1],
            gsl(t, t + 1),
            mode="recurrent",
            initial_state=state,
            output_final_state=True,
            attention_mask=msl(t, t + 1),
        )
        outs.append(o_t)
    assert rel_err(torch.cat(outs, dim=1), o_full) < 1e-10
    assert rel_err(state, s_full) < 1e-10


@pytest.mark.parametrize("gated", [False, True])
def test_padding_leaves_state_untouched_and_equals_unpadded(gated):
    """A left-padded row gives the same outputs and state as the same tokens without padding."""
    B, T, H, Dk, Dv, npad = 2, 23, 3, 8, 4, 6
    q, k, v, g, s0, mask = make_inputs(B, T, H, Dk, Dv, gated=gated, with_state=True, pad=[npad, 0], seed=3)
    gs = g if g.dim() == 1 else g[:1, npad:]
    ref, ref_s = retention(
        q[:1, npad:], k[:1, npad:], v[:1, npad:], gs, mode="recurrent", initial_state=s0[:1], output_final_state=True
    )
    for m in MODES:
        o, s = retention(
            q, k, v, g, mode=m, chunk_size=5, initial_state=s0, output_final_state=True, attention_mask=mask
        )
        assert rel_err(o[:1, npad:], ref) < 1e-10
        assert torch.count_nonzero(o[0, :npad]) == 0
        assert rel_err(s[:1], ref_s) < 1e-10


def test_auto_mode_uses_recurrent_for_one_step_and_matches():
    q, k, v, g, s0, _ = make_inputs(2, 1, 2, 4, 4, with_state=True)
    o_auto, s_auto = retention(q, k, v, g, initial_state=s0, output_final_state=True)
    o_rec, s_rec = retention(q, k, v, g, mode="recurrent", initial_state=s0, output_final_state=True)
    assert torch.equal(o_auto, o_rec) and torch.equal(s_auto, s_rec)


def test_scale_multiplies_q():
    q, k, v, g, _, _ = make_inputs(1, 9, 2, 4, 4)
    o1, _ = retention(q, k, v, g, scale=0.5, mode="parallel")
    o2, _ = retention(q * 0.5, k, v, g, mode="parallel")
    assert rel_err(o1, o2) < 1e-14


def test_final_state_is_none_unless_asked():
    q, k, v, g, _, _ = make_inputs(1, 9, 2, 4, 4)
    for m in MODES:
        assert retention(q, k, v, g, mode=m)[1] is None
