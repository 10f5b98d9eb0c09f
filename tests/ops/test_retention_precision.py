"""Low precision: float32 within 1e-5 of float64; bf16/fp16 within 5e-3 relative RMS; no future leakage."""

from __future__ import annotations

import pytest
import torch

from retnet.ops import official_log_decay, retention
from tests.ops.helpers import make_inputs, rel_err, rel_rms

MODES = ("parallel", "chunkwise", "recurrent")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gated", [False, True])
def test_float32_close_to_float64(mode, gated):
    q, k, v, g, s0, mask = make_inputs(2, 150, 4, 16, 16, gated=gated, with_state=True, pad=[5, 0])
    ref, ref_s = retention(q, k, v, g, mode="parallel", initial_state=s0, output_final_state=True, attention_mask=mask)
    o, s = retention(
        q.float(),
        k.float(),
        v.float(),
        g.float(),
        mode=mode,
        initial_state=s0.float(),
        output_final_state=True,
        attention_mask=mask,
    )
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(o, ref) < 1e-5
    assert rel_err(s, ref_s) < 1e-5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_relative_rms(mode, dtype):
    q, k, v, g, _, _ = make_inputs(1, 200, 8, 16, 16, gated=(mode == "chunkwise"))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    ref, _ = retention(q.double(), k.double(), v.double(), g, mode="parallel")
    o, s = retention(q, k, v, g.float(), mode=mode, output_final_state=True)
    assert o.dtype == dtype and s.dtype == torch.float32
    assert rel_rms(o, ref) < 5e-3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_no_future_token_leakage_with_many_heads(mode, dtype):
    """Heads h >= 4 have gamma that rounds to 1.0 in bf16; changing token t must not touch outputs before t."""
    H, T, t = 12, 96, 50
    q = torch.randn(1, T, H, 8).to(dtype)
    k = torch.randn(1, T, H, 8).to(dtype)
    v = torch.randn(1, T, H, 8).to(dtype)
    g = official_log_decay(H).to(dtype)  # decay handed in low precision on purpose
    o1, _ = retention(q, k, v, g, mode=mode, chunk_size=16)
    k2, v2 = k.clone(), v.clone()
    k2[:, t:] = torch.randn_like(k2[:, t:].float()).to(dtype) * 100
    v2[:, t:] = torch.randn_like(v2[:, t:].float()).to(dtype) * 100
    o2, _ = retention(q, k2, v2, g, mode=mode, chunk_size=16)
    assert torch.equal(o1[:, :t], o2[:, :t])
    assert not torch.equal(o1[:, t:], o2[:, t:])


def test_autocast_does_not_lower_accumulation():
    q, k, v, g, _, _ = make_inputs(1, 64, 2, 8, 8)
    ref, _ = retention(q, k, v, g, mode="chunkwise")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, _ = retention(q.float(), k.float(), v.float(), g.float(), mode="chunkwise", chunk_size=16)
    assert o.dtype == torch.float32
    assert rel_err(o, ref) < 1e-5
