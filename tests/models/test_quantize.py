"""int8 weights: every linear layer quantized, logits close to float32's, the decode step runs on them,
and refusals (non-CPU device, non-float32 model, unknown mode) name the flag."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retnet.models.decode_step import make_decode_step
from retnet.models.quantize import QuantizeError, check_quantize, quantize_int8, quantized_weight_bytes
from tests.models.helpers import rel_err, tiny_model


def test_int8_replaces_every_linear_and_stays_close_to_float32():
    model = tiny_model(dtype=torch.float32, hidden_size=64, value_dim=96, ffn_dim=128, gated=True)
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ref = model(ids).logits
    linear_bytes = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    quantize_int8(model)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    # one byte per weight plus a float32 scale per output row
    assert linear_bytes <= quantized_weight_bytes(model) < 1.1 * linear_bytes
    with torch.no_grad():
        out = model(ids).logits
    assert 0 < rel_err(out, ref) < 0.1  # int8 weights and activations: a few percent
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_decode_step_runs_on_an_int8_model():
    model = quantize_int8(tiny_model(dtype=torch.float32))
    ids = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        ref = model(ids[:, -1:], state=model(ids[:, :-1], use_cache=True).state, use_cache=True, mode="recurrent")
    logits, _ = make_decode_step(model)(ids[:, -1:], model(ids[:, :-1], use_cache=True).state)
    assert rel_err(logits, ref.logits[:, 0]) < 1e-5
    # a full pass quantizes the activations of all positions together: close, not equal
    assert rel_err(logits, out.logits[:, -1]) < 0.1


@pytest.mark.parametrize("gated", [False, True])
def test_step_fuses_int8_projections_without_changing_the_result(gated):
    """The step's fused q/k/v/g and FFN input linears hold the same int8 values and quantize the input once, as
    each linear alone does: the logits equal the recurrent forward's (which runs the linears one by one)."""
    model = quantize_int8(tiny_model(dtype=torch.float32, gated=gated))
    step = make_decode_step(model)
    assert all(f.qkvg is not None and f.ffn_in is not None for f in step._fused.values())
    ids = torch.randint(0, 97, (3, 7))
    with torch.no_grad():
        state = model(ids[:, :-1], use_cache=True).state
        ref = model(ids[:, -1:], state=state.clone(), use_cache=True, mode="recurrent")
    logits, new_state = step(ids[:, -1:], state)
    assert rel_err(logits, ref.logits[:, 0]) < 1e-6
    for a, b in zip(new_state.layers, ref.state.layers, strict=True):
        assert rel_err(a, b) < 1e-6


def test_fusing_refuses_float_and_mixed_linears():
    from retnet.models.quantize import fuse_int8_linears

    model = tiny_model(dtype=torch.float32)
    mix = model.model.layers[0].retention
    assert fuse_int8_linears([mix.q_proj, mix.k_proj]) is None  # float32 linears
    quantize_int8(model)
    assert fuse_int8_linears([mix.q_proj]) is None  # nothing to fuse
    assert fuse_int8_linears([mix.q_proj, mix.out_proj]) is None  # different input widths
    x = torch.randn(2, mix.q_proj.in_features)
    fused = fuse_int8_linears([mix.q_proj, mix.v_proj])
    assert torch.equal(fused(x), torch.cat([mix.q_proj(x), mix.v_proj(x)], -1))


def test_refusals_name_the_flag():
    with pytest.raises(QuantizeError, match="--quantize int8 runs on the CPU only.*--device cuda"):
        check_quantize("int8", "cuda")
    with pytest.raises(QuantizeError, match="--quantize int8 runs on the CPU only"):
        quantize_int8(tiny_model(dtype=torch.float32).to("meta"))
    with pytest.raises(QuantizeError, match="--quantize must be one of none, int8"):
        check_quantize("int4", "cpu")
    with pytest.raises(QuantizeError, match="--quantize int8 needs a float32 model"):
        quantize_int8(tiny_model(dtype=torch.float64))
    check_quantize("none", "cuda")
