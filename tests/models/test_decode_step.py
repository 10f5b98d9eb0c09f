"""The lean decode step equals the model's recurrent forward (float64, 1e-9) for every stack; in place or not;
compiled greedy tokens equal eager ones (CPU, float32)."""

from __future__ import annotations

import copy

import pytest
import torch

from retnet.models.decode_step import make_decode_step
from tests.models.helpers import rel_err, tiny_model
from tests.models.test_variants import assert_states_close

STACKS = {
    "plain": dict(),
    "gated": dict(gated=True),
    "normalize-decay": dict(normalize_decay=True),
    "group-head-norm": dict(head_norm="group", embed_scale=2.0, layernorm_embedding=True),
    "hybrid": dict(num_layers=4, block_types=["gated", "attention", "retention", "attention"]),
    "yoco": dict(num_layers=4, architecture="yoco"),
}


def _prefill(model, batch: int = 3, length: int = 9):
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    return model(ids, use_cache=True, mode="chunkwise").state


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("kernel", [False, True])
def test_fast_step_equals_the_recurrent_forward(stack, in_place, kernel):
    """``kernel=True`` is the CUDA route (through the retention operator; on the CPU its torch backend)."""
    model = tiny_model(**STACKS[stack])
    state = _prefill(model)
    ref_state = state.clone()
    step = make_decode_step(model, in_place=in_place, kernel=kernel)
    for _ in range(4):
        ids = torch.randint(0, model.config.vocab_size, (3, 1))
        with torch.no_grad():
            ref = model(ids, state=ref_state, use_cache=True, mode="recurrent")
        before = state.clone()
        logits, new_state = step(ids, state)
        assert logits.shape == (3, model.config.vocab_size)
        assert rel_err(logits, ref.logits[:, 0]) < 1e-9
        assert_states_close(new_state, ref.state)
        if in_place:
            assert new_state is state
        else:
            assert_states_close(state, before)  # the passed state is untouched
        state, ref_state = new_state, ref.state


def test_in_place_step_writes_into_the_passed_tensors():
    model = tiny_model()
    state = _prefill(model)
    layer0, offset = state.layers[0], state.offset
    _, new_state = make_decode_step(model, in_place=True)(torch.zeros(3, 1, dtype=torch.long), state)
    assert new_state.layers[0] is layer0 and new_state.offset is offset
    assert offset.tolist() == [10, 10, 10]


def test_bad_ids_and_state_name_the_argument():
    model = tiny_model()
    state = _prefill(model, batch=2)
    step = make_decode_step(model)
    with pytest.raises(ValueError, match=r"ids must have shape \[B, 1\]"):
        step(torch.zeros(2, 3, dtype=torch.long), state)
    with pytest.raises(ValueError, match="state holds 2 rows but ids has batch size 3"):
        step(torch.zeros(3, 1, dtype=torch.long), state)


def _greedy(step, model, prompt, n):
    out = model(prompt, use_cache=True)
    logits, state = out.logits[:, -1], out.state
    tokens = []
    for _ in range(n):
        tok = logits.argmax(-1, keepdim=True)
        tokens.append(tok)
        logits, state = step(tok, state)
    return torch.cat(tokens, 1)


@pytest.mark.slow
def test_compiled_step_gives_the_eager_greedy_tokens():
    """The eager step is made first, so the compiled one meets weights laid side by side (views into wider
    matrices), which inductor's freezing would fold wrongly: the compiled step gives them their own storage."""
    model = tiny_model(dtype=torch.float32, num_layers=1, gated=True)
    prompt = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        eager = _greedy(make_decode_step(model), model, prompt, 4)
        compiled_step = make_decode_step(model, compile=True, in_place=True)  # the engine's way: harder for compile
        compiled = _greedy(compiled_step, model, prompt, 4)
    assert torch.equal(compiled, eager)
    assert compiled_step.compile_s is not None and compiled_step.compile_s > 0
    from torch._inductor import config as inductor_config

    assert not inductor_config.freezing  # set only while the compiled CPU step runs, never left behind


@pytest.mark.slow
@pytest.mark.parametrize("products", ["rows", "blas"])
@pytest.mark.parametrize("stack", ["plain", "gated", "normalize-decay", "hybrid"])
def test_compiled_one_row_step_equals_the_recurrent_forward(stack, products):
    """The CPU-compiled one-row step (row dot products on weights folded row-major, or BLAS products on the
    side-by-side weights; the recurrence in the form inductor fuses, the rotation computed outside the compiled
    region) gives the recurrent forward's logits and state (float64), in place, over steps at growing
    positions; the model's weights keep their values."""
    model = tiny_model(**STACKS[stack])
    state = _prefill(model, batch=1)
    ref_state = state.clone()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = make_decode_step(model, compile=True, in_place=True, products=products)
    assert step.products == products
    for _ in range(3):
        ids = torch.randint(0, model.config.vocab_size, (1, 1))
        with torch.no_grad():
            ref = model(ids, state=ref_state, use_cache=True, mode="recurrent")
        logits, state = step(ids, state)
        assert rel_err(logits, ref.logits[:, 0]) < 1e-9
        assert_states_close(state, ref.state)
        ref_state = ref.state
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_compiled_cpu_step_picks_its_products_by_timing_and_rejects_unknown_ones(monkeypatch):
    """``products="auto"`` asks :func:`blas_reads_faster` once, at construction, and keeps the answer; "rows"
    leaves no weight side by side (the compiled step folds its own row-major copies); a name it does not know
    is an error naming the argument."""
    import retnet.models.decode_step as decode_step

    asked = []
    for faster in (True, False):
        monkeypatch.setattr(decode_step, "blas_reads_faster", lambda mats, f=faster: asked.append(len(mats)) or f)
        model = tiny_model(dtype=torch.float32)
        step = make_decode_step(model, compile=True)
        assert step.products == ("blas" if faster else "rows")
        assert any(fused.float_side_by_side() for fused in step._fused.values()) == faster
    assert len(asked) == 2 and all(n > 0 for n in asked)
    assert make_decode_step(tiny_model(), compile=False).products is None  # eager: nothing to choose
    with pytest.raises(ValueError, match="products must be one of auto, rows, blas, got 'gemv'"):
        make_decode_step(tiny_model(), compile=True, products="gemv")


@pytest.mark.parametrize("stack", STACKS)
def test_a_step_reads_no_value_back_to_the_host(stack):
    """On meta tensors every value read (``.item()``, ``bool()``, ``.tolist()``) raises: a step that runs there
    never synchronises with an accelerator."""
    model = tiny_model(**STACKS[stack])
    state = _prefill(model).to("meta")
    model.to("meta")
    with pytest.raises(RuntimeError):
        bool(state.offset.sum() > 0)
    step = make_decode_step(model, in_place=True)
    logits, state = step(torch.zeros(3, 1, dtype=torch.long, device="meta"), state)
    logits, state = step(torch.zeros(3, 1, dtype=torch.long, device="meta"), state)
    assert logits.device.type == "meta" and logits.shape == (3, model.config.vocab_size)


def test_cpu_step_lays_weights_out_input_major_with_the_same_values():
    """Construction re-lays the CPU linear weights (transposed storage) without changing a value; the step
    still equals the recurrent forward of an untouched copy."""
    model = tiny_model()
    untouched = copy.deepcopy(model)
    step = make_decode_step(model)
    for (name, p), (_, ref) in zip(model.named_parameters(), untouched.named_parameters(), strict=True):
        assert torch.equal(p, ref), name
    mix, ffn = model.model.layers[0].retention, model.model.layers[0].ffn
    out_proj = mix.out_proj.weight
    assert not out_proj.is_contiguous() and out_proj.t().is_contiguous()
    assert model.model.embed_tokens.weight.is_contiguous()
    # q/k/v/g and fc1/gate side by side: adjacent column blocks of one input-major matrix
    for group in ([mix.q_proj, mix.k_proj, mix.v_proj, mix.g_proj], [ffn.fc1, ffn.gate]):
        ws = [m.weight for m in group]
        width = sum(w.shape[0] for w in ws)
        assert all(w.t().stride() == (width, 1) for w in ws)
        starts = [w.data_ptr() for w in ws]
        sizes = [w.shape[0] * w.element_size() for w in ws]
        assert starts == [starts[0] + sum(sizes[:j]) for j in range(len(ws))]
    state = _prefill(model)
    ids = torch.randint(0, model.config.vocab_size, (3, 1))
    with torch.no_grad():
        ref = untouched(ids, state=state.clone(), use_cache=True, mode="recurrent")
    logits, _ = step(ids, state)
    assert rel_err(logits, ref.logits[:, 0]) < 1e-12


def test_weight_products_are_every_float_matrix_once():
    """Side-by-side groups count once, as their wide matrix; together the products hold every linear weight."""
    model = tiny_model(**STACKS["gated"])
    step = make_decode_step(model)
    mats = step.weight_products()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(w.numel() for w in mats) == sum(m.weight.numel() for m in linears)
    d = model.config.hidden_size
    widths = [w.shape[1] for w in mats if w.shape[0] == d]
    mix = model.model.layers[0].retention
    assert sum(m.out_features for m in (mix.q_proj, mix.k_proj, mix.v_proj, mix.g_proj)) in widths


def test_side_by_side_weights_follow_in_place_updates_and_are_laid_out_again_when_replaced():
    """The step reads the modules' weights: an in-place update (``load_state_dict``) shows through the shared
    matrix; weights replaced by new tensors (``.to()``) are laid side by side again on the next call."""
    model = tiny_model()
    other = tiny_model(seed=1)
    step = make_decode_step(model)
    state = _prefill(model)
    ids = torch.randint(0, model.config.vocab_size, (3, 1))
    model.load_state_dict(other.state_dict())  # copies into the existing tensors
    with torch.no_grad():
        ref = other(ids, state=state.clone(), use_cache=True, mode="recurrent")
    assert rel_err(step(ids, state.clone())[0], ref.logits[:, 0]) < 1e-12
    mix = model.model.layers[0].retention
    mix.q_proj.weight.data = mix.q_proj.weight.data.contiguous() * 2  # replaced: no longer a view
    with torch.no_grad():
        ref = model(ids, state=state.clone(), use_cache=True, mode="recurrent")
    assert rel_err(step(ids, state.clone())[0], ref.logits[:, 0]) < 1e-12
    assert mix.q_proj.weight.t().stride()[0] > mix.q_proj.in_features  # laid out again


def test_a_second_step_on_the_same_model_shares_the_side_by_side_layout():
    """Two eager steps on one model (e.g. packed and unpacked) share the laid-out matrices instead of copying
    the weights back and forth on every call."""
    model = tiny_model()
    first = make_decode_step(model)
    ptrs = [p.data_ptr() for p in model.parameters()]
    second = make_decode_step(model)
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    assert all(f.current() for f in first._fused.values()) and all(f.current() for f in second._fused.values())
    state = _prefill(model)
    ids = torch.randint(0, model.config.vocab_size, (3, 1))
    a, b = first(ids, state.clone())[0], second(ids, state.clone())[0]
    assert torch.equal(a, b)
    assert [p.data_ptr() for p in model.parameters()] == ptrs


@pytest.mark.parametrize("stack", ["plain", "gated", "hybrid"])
def test_packed_linears_give_the_plain_step(stack):
    """float32 (oneDNN packs no float64): a batch of >= pack_min_batch rows runs on packed weights and gives
    the unpacked step's logits and states to float32 rounding; smaller batches are not packed."""
    model = tiny_model(dtype=torch.float32, **STACKS[stack])
    packed = make_decode_step(model, pack_min_batch=4)
    plain = make_decode_step(model, pack_min_batch=None)
    state = _prefill(model, batch=5)
    ref_state = state.clone()
    for _ in range(3):
        ids = torch.randint(0, model.config.vocab_size, (5, 1))
        logits, state = packed(ids, state)
        ref, ref_state = plain(ids, ref_state)
        assert rel_err(logits, ref) < 1e-5
        for a, b in zip(state.layers, ref_state.layers, strict=True):
            if isinstance(a, torch.Tensor):
                assert rel_err(a, b) < 1e-5
    assert len(packed.packed) > 0 and len(plain.packed) == 0
    small = make_decode_step(model, pack_min_batch=4)
    small(torch.zeros(3, 1, dtype=torch.long), _prefill(model, batch=3))
    assert len(small.packed) == 0


def test_packed_weights_follow_a_weight_update():
    model = tiny_model(dtype=torch.float32)
    packed = make_decode_step(model, pack_min_batch=2)
    plain = make_decode_step(model, pack_min_batch=None)
    state = _prefill(model, batch=4)
    ids = torch.randint(0, model.config.vocab_size, (4, 1))
    packed(ids, state.clone())
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    logits, _ = packed(ids, state.clone())
    ref, _ = plain(ids, state.clone())
    assert rel_err(logits, ref) < 1e-5
