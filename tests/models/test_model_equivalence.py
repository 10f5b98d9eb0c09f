"""Whole-model logits and states agree in parallel, chunkwise and recurrent mode (float64, 1e-9)."""

from __future__ import annotations

import pytest
import torch

from tests.models.helpers import rel_err, tiny_model

MODES = ("parallel", "chunkwise", "recurrent")


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("head_norm", ["rms", "group"])
def test_modes_agree(gated, head_norm):
    model = tiny_model(gated=gated, head_norm=head_norm)
    ids = torch.randint(0, 97, (2, 21))
    outs = {m: model(ids, mode=m, use_cache=True) for m in MODES}
    ref = outs["recurrent"]
    for m in ("parallel", "chunkwise"):
        assert rel_err(outs[m].logits, ref.logits) < 1e-9, m
        for a, b in zip(outs[m].state.layers, ref.state.layers):
            assert rel_err(a, b) < 1e-9, m
        assert torch.equal(outs[m].state.offset, ref.state.offset)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("prefill_mode", ["parallel", "chunkwise"])
def test_prefill_then_decode_equals_full_pass(gated, prefill_mode):
    model = tiny_model(gated=gated)
    ids = torch.randint(0, 97, (2, 19))
    full = model(ids, mode="parallel", use_cache=True)
    out = model(ids[:, :11], mode=prefill_mode, use_cache=True)
    logits, state = [out.logits], out.state
    for t in range(11, 19):
        out = model(ids[:, t : t + 1], mode="recurrent", state=state, use_cache=True)
        logits.append(out.logits)
        state = out.state
    assert rel_err(torch.cat(logits, 1), full.logits) < 1e-9
    for a, b in zip(state.layers, full.state.layers):
        assert rel_err(a, b) < 1e-9
    assert state.offset.tolist() == [19, 19]


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_left_padded_batch_equals_each_alone(gated, mode):
    model = tiny_model(gated=gated)
    a = torch.randint(0, 97, (1, 17))
    b = torch.randint(0, 97, (1, 9))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 8, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[1, :8] = 0
    out = model(ids, attention_mask=mask, mode=mode, use_cache=True)
    alone_a = model(a, mode=mode, use_cache=True)
    alone_b = model(b, mode=mode, use_cache=True)
    assert rel_err(out.logits[0], alone_a.logits[0]) < 1e-9
    assert rel_err(out.logits[1, 8:], alone_b.logits[0]) < 1e-9
    assert out.state.offset.tolist() == [17, 9]
    # Decoding continues identically for the padded row.
    nxt = torch.randint(0, 97, (2, 1))
    step = model(nxt, state=out.state, mode="recurrent")
    step_b = model(nxt[1:], state=alone_b.state, mode="recurrent")
    assert rel_err(step.logits[1], step_b.logits[0]) < 1e-9


def test_loss_is_shifted_cross_entropy():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 10))
    out = model(ids, labels=ids)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ref)


def test_bf16_autocast_forward_backward_no_nan_no_leakage():
    torch.manual_seed(0)
    model = tiny_model(dtype=torch.float32, num_heads=8, hidden_size=64, value_dim=64, num_layers=2).train()
    ids = torch.randint(0, 97, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids, mode="chunkwise")
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    t = 40
    ids2 = ids.clone()
    ids2[:, t:] = (ids2[:, t:] + 1) % 97
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for mode in MODES:
            l1 = model(ids, mode=mode).logits
            l2 = model(ids2, mode=mode).logits
            assert torch.equal(l1[:, :t], l2[:, :t]), mode
            assert not torch.equal(l1[:, t:], l2[:, t:])


def test_state_size_does_not_grow():
    model = tiny_model()
    out = model(torch.randint(0, 97, (1, 5)), use_cache=True)
    n0 = out.state.nbytes()
    out = model(torch.randint(0, 97, (1, 50)), state=out.state, use_cache=True)
    assert out.state.nbytes() == n0
    cfg = model.config
    assert out.state.layers[0].nbytes == cfg.state_nbytes_per_layer() * 2  # float64 model: 8-byte state


@pytest.mark.parametrize("mode", MODES)
def test_zero_eps_with_padding_stays_finite(mode):
    """Padded steps hold zero vectors; with norm eps 0 nothing may turn them into NaN that leaks into tokens."""
    model = tiny_model(norm_eps=0.0)
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    out = model(ids, attention_mask=mask, mode=mode, use_cache=True)
    assert torch.isfinite(out.logits).all()
    alone = model(ids[1:, 5:], mode=mode)
    assert rel_err(out.logits[1, 5:], alone.logits[0]) < 1e-9
    assert all(torch.isfinite(s).all() for s in out.state.layers)


def test_zero_eps_with_padding_has_finite_gradients():
    model = tiny_model(norm_eps=0.0).train()
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    model(ids, labels=ids, attention_mask=mask, mode="chunkwise").loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
