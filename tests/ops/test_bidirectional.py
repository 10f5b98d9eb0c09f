"""Bidirectional retention: the linear-time forms equal the parallel form for any length and padding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from retnet.ops import bidirectional_retention, official_log_decay
from tests.ops.helpers import make_inputs, rel_err


@given(
    B=st.integers(1, 3),
    T=st.integers(1, 70),
    H=st.integers(1, 3),
    Dk=st.sampled_from([2, 4, 8]),
    Dv=st.sampled_from([1, 3, 8]),
    chunk=st.sampled_from([1, 7, 16, 64]),
    padded=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_forms_equal_parallel_float64(B, T, H, Dk, Dv, chunk, padded, seed):
    pad = [(seed >> b) % (T + 1) for b in range(B)] if padded else None
    q, k, v, g, _, mask = make_inputs(B, T, H, Dk, Dv, pad=pad, seed=seed)
    ref = bidirectional_retention(q, k, v, g, mode="parallel", attention_mask=mask)
    for mode in ("chunkwise", "recurrent"):
        o = bidirectional_retention(q, k, v, g, mode=mode, chunk_size=chunk, attention_mask=mask)
        assert rel_err(o, ref) < 1e-9, mode


def test_parallel_matches_definition():
    q, k, v, g, _, _ = make_inputs(1, 9, 2, 4, 3)
    o = bidirectional_retention(q, k, v, g, mode="parallel")
    n = torch.arange(9)
    decay = torch.exp((n[:, None] - n[None]).abs()[None].double() * g[:, None, None])
    ref = torch.einsum("bnhd,bmhd,hnm,bmhe->bnhe", q, k, decay, v)
    assert rel_err(o, ref) < 1e-12


def test_padding_equals_alone_and_sees_the_future():
    q, k, v, g, _, mask = make_inputs(2, 15, 2, 4, 4, pad=[0, 5], seed=2)
    o = bidirectional_retention(q, k, v, g, mode="chunkwise", chunk_size=4, attention_mask=mask)
    alone = bidirectional_retention(q[1:, 5:], k[1:, 5:], v[1:, 5:], g, mode="parallel")
    assert rel_err(o[1:, 5:], alone) < 1e-10
    assert torch.count_nonzero(o[1, :5]) == 0
    v2 = v.clone()
    v2[:, -1] += 1  # the last token changes every earlier output: the encoder looks both ways
    o2 = bidirectional_retention(q, k, v2, g, mode="chunkwise", chunk_size=4, attention_mask=mask)
    assert (o2[0, :-1] - o[0, :-1]).abs().amax(dim=(-1, -2)).min() > 0


def test_low_precision_and_errors():
    q, k, v, g, _, _ = make_inputs(1, 40, 4, 8, 8)
    ref = bidirectional_retention(q, k, v, g, mode="parallel")
    o = bidirectional_retention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.float(), mode="chunkwise")
    assert o.dtype == torch.bfloat16
    assert float((o.double() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()) < 5e-3
    with pytest.raises(ValueError, match=r"log_decay must have shape \[H\] for bidirectional"):
        bidirectional_retention(q, k, v, torch.zeros(1, 40, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="mode must be one of"):
        bidirectional_retention(q, k, v, official_log_decay(4), mode="fast")
