"""Gated, hybrid (retention + attention) and YOCO stacks: every form agrees, prefill + decode equals a full
pass, left padding equals each row alone, and YOCO's cache holds one KV pair per token (float64, 1e-9)."""

from __future__ import annotations

import pytest
import torch

from retnet.generation import generate
from retnet.layers import KVCache
from retnet.models import RetNetState
from tests.models.helpers import rel_err, tiny_model

MODES = ("parallel", "chunkwise", "recurrent")
VARIANTS = {
    "gated": dict(gated=True),
    "hybrid": dict(num_layers=4, block_types=["gated", "attention", "retention", "attention"]),
    "hybrid-gqa": dict(num_layers=4, block_types="GA", num_kv_heads=2),
    "yoco": dict(num_layers=4, architecture="yoco"),
    "yoco-gqa-mixed-self": dict(num_layers=4, architecture="yoco", block_types="RA", num_kv_heads=1),
}


def state_tensors(state: RetNetState) -> list[torch.Tensor]:
    """Every tensor of a state (KV caches as keys/values), in a fixed order."""
    out = []
    for entry in [*state.layers, state.shared]:
        if isinstance(entry, KVCache):
            out += [entry.k, entry.v]
        elif entry is not None:
            out.append(entry)
    return out


def assert_states_close(a: RetNetState, b: RetNetState) -> None:
    ta, tb = state_tensors(a), state_tensors(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        assert x.shape == y.shape
        assert rel_err(x, y) < 1e-9
    assert torch.equal(a.offset, b.offset)


@pytest.mark.parametrize("variant", VARIANTS)
def test_modes_agree(variant):
    model = tiny_model(**VARIANTS[variant])
    ids = torch.randint(0, 97, (2, 21))
    outs = {m: model(ids, mode=m, use_cache=True) for m in MODES}
    for m in ("parallel", "chunkwise"):
        assert rel_err(outs[m].logits, outs["recurrent"].logits) < 1e-9, m
        assert_states_close(outs[m].state, outs["recurrent"].state)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prefill_mode", ["parallel", "chunkwise"])
def test_prefill_then_decode_equals_full_pass(variant, prefill_mode):
    model = tiny_model(**VARIANTS[variant])
    ids = torch.randint(0, 97, (2, 19))
    full = model(ids, mode="parallel", use_cache=True)
    out = model(ids[:, :11], mode=prefill_mode, use_cache=True)
    logits, state = [out.logits], out.state
    for t in range(11, 19):
        out = model(ids[:, t : t + 1], mode="recurrent", state=state, use_cache=True)
        logits.append(out.logits)
        state = out.state
    assert rel_err(torch.cat(logits, 1), full.logits) < 1e-9
    assert_states_close(state, full.state)
    # A multi-token continuation (a second chat turn) from the state also matches.
    out = model(ids[:, :7], use_cache=True)
    more = model(ids[:, 7:], state=out.state, use_cache=True, mode=prefill_mode)
    assert rel_err(more.logits, full.logits[:, 7:]) < 1e-9


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_left_padded_batch_equals_each_alone(variant, mode):
    model = tiny_model(**VARIANTS[variant])
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
    nxt = torch.randint(0, 97, (2, 3))
    state, state_b = out.state, alone_b.state
    for t in range(3):  # decoding continues identically for the padded row
        step = model(nxt[:, t : t + 1], state=state, mode="recurrent", use_cache=True)
        step_b = model(nxt[1:, t : t + 1], state=state_b, mode="recurrent", use_cache=True)
        assert rel_err(step.logits[1], step_b.logits[0]) < 1e-9
        state, state_b = step.state, step_b.state


@pytest.mark.parametrize("variant", ["hybrid", "yoco"])
def test_state_cat_and_select_with_kv_caches_of_different_lengths(variant):
    model = tiny_model(**VARIANTS[variant])
    a, b = torch.randint(0, 97, (1, 12)), torch.randint(0, 97, (1, 5))
    sa, sb = model(a, use_cache=True).state, model(b, use_cache=True).state
    both = RetNetState.cat([sa, sb])
    assert both.batch_size == 2 and both.offset.tolist() == [12, 5]
    nxt = torch.randint(0, 97, (2, 1))
    step = model(nxt, state=both, use_cache=True)
    assert rel_err(step.logits[0], model(nxt[:1], state=sa).logits[0]) < 1e-9
    assert rel_err(step.logits[1], model(nxt[1:], state=sb).logits[0]) < 1e-9
    back = step.state.select([1])
    again = model(nxt[1:], state=back)
    ref = model(nxt[1:], state=model(nxt[1:], state=sb, use_cache=True).state)
    assert rel_err(again.logits, ref.logits) < 1e-9
    moved = both.to("cpu").clone()
    assert moved.nbytes() == both.nbytes()


def test_yoco_cache_holds_one_kv_pair_per_token_not_one_per_layer():
    per_token = {}
    for layers in (4, 8):
        model = tiny_model(dtype=torch.float32, num_layers=layers, architecture="yoco")
        n = [model(torch.randint(0, 97, (1, t)), use_cache=True).state.nbytes() for t in (10, 30)]
        per_token[layers] = (n[1] - n[0]) / 20
        cfg = model.config
        assert n[0] == cfg.state_nbytes(10) and n[1] == cfg.state_nbytes(30)
    kv_pair = 2 * 32 * 4  # keys + values, hidden 32 (4 heads x 8), float32
    assert per_token == {4: kv_pair, 8: kv_pair}  # doubling the cross-attention layers adds nothing per token
    hybrid = tiny_model(dtype=torch.float32, **VARIANTS["hybrid"])
    n = [hybrid(torch.randint(0, 97, (1, t)), use_cache=True).state.nbytes() for t in (10, 30)]
    assert (n[1] - n[0]) / 20 == 2 * kv_pair  # two attention layers, a cache each
    assert n[1] == hybrid.config.state_nbytes(30)
    gqa = tiny_model(dtype=torch.float32, **VARIANTS["yoco-gqa-mixed-self"])
    n = [gqa(torch.randint(0, 97, (1, t)), use_cache=True).state.nbytes() for t in (10, 30)]
    assert (n[1] - n[0]) / 20 == 2 * kv_pair / 4  # self-decoder attention layer + shared cache, 1 of 4 heads


def test_yoco_prefill_skips_the_cross_decoder():
    model = tiny_model(**VARIANTS["yoco"])
    seen = []
    for layer in model.model.layers[2:]:
        layer.cross_attention.q_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    ids = torch.randint(0, 97, (2, 15))
    full = model(ids, use_cache=True)
    assert seen == [15, 15]
    seen.clear()
    last = model(ids, use_cache=True, logits_to_keep=1)
    assert seen == [1, 1]
    assert last.logits.shape == (2, 1, 97)
    assert rel_err(last.logits[:, 0], full.logits[:, -1]) < 1e-9
    assert_states_close(last.state, full.state)
    with pytest.raises(ValueError, match="logits_to_keep cannot be combined with labels"):
        model(ids, labels=ids, logits_to_keep=1)


LAST_BLOCK_CASES = {
    "plain": dict(),
    "gated": dict(gated=True),
    "normalize-decay": dict(normalize_decay=True),
    "hybrid-attention-last": VARIANTS["hybrid"],
}


@pytest.mark.parametrize("case", LAST_BLOCK_CASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padded", [False, True])
def test_logits_to_keep_runs_the_last_block_on_the_kept_positions(case, mode, padded):
    """The last block's FFN (and a retention block's query and gate projections) sees only the kept positions;
    logits and state equal the full pass's, from a state too (a prompt's second chunk) and with left padding."""
    model = tiny_model(**LAST_BLOCK_CASES[case])
    last = model.model.layers[-1]
    seen = []
    last.ffn.register_forward_hook(lambda m, i, o: seen.append(("ffn", i[0].shape[1])))
    if last.kind != "attention":
        last.retention.g_proj.register_forward_hook(lambda m, i, o: seen.append(("gate", i[0].shape[1])))
        last.retention.q_proj.register_forward_hook(lambda m, i, o: seen.append(("query", i[0].shape[1])))
    ids = torch.randint(0, 97, (2, 21))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :5] = 0
    head = model(ids[:, :9], attention_mask=mask[:, :9], use_cache=True, mode=mode)
    full = model(ids[:, 9:], attention_mask=mask[:, 9:], state=head.state, use_cache=True, mode=mode)
    seen.clear()
    kept = model(ids[:, 9:], attention_mask=mask[:, 9:], state=head.state, use_cache=True, mode=mode, logits_to_keep=3)
    assert sorted(seen) == ([("ffn", 3)] if last.kind == "attention" else [("ffn", 3), ("gate", 3), ("query", 3)])
    assert kept.logits.shape == (2, 3, 97)
    assert rel_err(kept.logits, full.logits[:, -3:]) < 1e-9
    assert_states_close(kept.state, full.state)


def test_logits_to_keep_under_activation_checkpointing_equals_the_full_pass():
    model = tiny_model(num_layers=2).train()
    model.model.gradient_checkpointing = True
    model.model.checkpoint_segment = 8
    ids = torch.randint(0, 97, (2, 21))
    full = model(ids, mode="chunkwise")
    kept = model(ids, mode="chunkwise", logits_to_keep=2)
    assert kept.logits.shape == (2, 2, 97)
    assert rel_err(kept.logits, full.logits[:, -2:]) < 1e-9
    kept.logits.sum().backward()
    assert all(p.grad is not None for p in model.model.layers[0].parameters())


@pytest.mark.parametrize("variant", ["hybrid", "yoco"])
def test_greedy_generation_matches_full_pass(variant):
    model = tiny_model(**VARIANTS[variant])
    prompt = torch.randint(0, 97, (2, 6))
    seqs, state = generate(model, prompt, max_new_tokens=8, temperature=0)
    logits = model(seqs, mode="parallel").logits
    assert torch.equal(logits[:, 5:-1].argmax(-1), seqs[:, 6:])
    assert_states_close(state, model(seqs, use_cache=True).state)


@pytest.mark.parametrize("variant", ["hybrid", "yoco"])
def test_bf16_autocast_trains_and_never_sees_the_future(variant):
    model = tiny_model(dtype=torch.float32, **VARIANTS[variant]).train()
    ids = torch.randint(0, 97, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids, mode="chunkwise")
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    ids2 = ids.clone()
    ids2[:, 25:] = (ids2[:, 25:] + 1) % 97
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for mode in MODES:
            l1, l2 = model(ids, mode=mode).logits, model(ids2, mode=mode).logits
            assert torch.equal(l1[:, :25], l2[:, :25]), mode
            assert not torch.equal(l1[:, 25:], l2[:, 25:])
