"""Causal attention layer: its three evaluation orders, cache continuation and padding (float64, any shape)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from retnet.layers import CausalSelfAttention, KVCache, RetNetRotary
from tests.models.helpers import rel_err


def rotary_for(positions: torch.Tensor, head_dim: int):
    return RetNetRotary(head_dim)(positions, torch.float64)


@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 20),
    heads_kv=st.sampled_from([(2, 2), (4, 2), (4, 1)]),
    chunk=st.integers(1, 9),
    split=st.integers(0, 20),
    pad=st.integers(0, 5),
)
def test_orders_agree_and_cache_continues(batch, length, heads_kv, chunk, split, pad):
    heads, kv = heads_kv
    torch.manual_seed(0)
    layer = CausalSelfAttention(8 * heads, heads, kv, chunk_size=chunk).double()
    x = torch.randn(batch, length, 8 * heads, dtype=torch.float64)
    pad = min(pad, length - 1)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :pad] = 0  # row 0 left padded
    seen = mask.cumsum(1)
    sin, cos = rotary_for((seen - 1).clamp_min(0), 8)
    outs = {
        m: layer(x, sin, cos, attention_mask=mask, mode=m, use_cache=True)
        for m in ("parallel", "chunkwise", "recurrent")
    }
    ref, cache = outs["parallel"]
    assert isinstance(cache, KVCache) and cache.length == length
    assert torch.isfinite(ref).all()
    assert (ref[0, :pad] == 0).all()  # padded positions output zeros
    for m in ("chunkwise", "recurrent"):
        assert rel_err(outs[m][0], ref) < 1e-9, m
    # Prefill ``split`` tokens, then the rest from the cache.
    s = min(split, length - 1)
    if s > 0:
        a, ca = layer(x[:, :s], sin[:, :s], cos[:, :s], attention_mask=mask[:, :s], use_cache=True)
        b, _ = layer(x[:, s:], sin[:, s:], cos[:, s:], state=ca, attention_mask=mask[:, s:], use_cache=True)
        assert rel_err(torch.cat([a, b], 1), ref) < 1e-9
    # The padded row equals the same tokens alone.
    if pad:
        sin0, cos0 = rotary_for(torch.arange(length - pad)[None], 8)
        alone, _ = layer(x[:1, pad:], sin0, cos0)
        assert rel_err(ref[0, pad:], alone[0]) < 1e-9
