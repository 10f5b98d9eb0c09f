"""``model.generate``: greedy equals ``retnet generate``, left padding, beam search, sampling, streaming, cache size."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer, pipeline

from retnet.generation import generate as retnet_generate
from retnet.hf import RetNetCache, RetNetHFForCausalLM
from retnet.hf.cache import output_cache as out_cache
from retnet.hf.modeling import OUTPUT_CACHE_FIELD, MissingStateError
from retnet.ops.retention import PARALLEL_MAX_LEN
from tests.hf.helpers import tiny_core

VARIANTS = {
    "plain": {},
    "gated": {"gated": True},
    "hybrid": {"block_types": "GA", "num_layers": 2},
    "yoco": {"architecture": "yoco", "num_layers": 4},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_equals_retnet_generate_token_for_token(variant):
    core = tiny_core(120, seed=3, **VARIANTS[variant])
    hf = RetNetHFForCausalLM.from_retnet(core)
    assert 300 > PARALLEL_MAX_LEN  # the longest prompt is prefilled in chunkwise form
    for length in (1, 7, 300):
        prompt = torch.randint(0, 120, (1, length))
        ours, _ = retnet_generate(core, prompt, max_new_tokens=40, temperature=0)
        theirs = hf.generate(prompt, max_new_tokens=40, do_sample=False)
        assert theirs.tolist() == ours.tolist(), f"{variant}, prompt of {length} tokens"


def test_a_step_past_position_0_without_its_state_raises():
    """Decoding must never silently restart from an empty state (what a renamed cache argument once caused)."""
    hf = RetNetHFForCausalLM.from_retnet(tiny_core(50, seed=2, dtype=torch.float64))
    prompt = torch.randint(0, 50, (1, 6))
    out = hf(prompt, use_cache=True)
    step = torch.randint(0, 50, (1, 1))
    wide_mask = torch.ones(1, 7, dtype=torch.long)
    with pytest.raises(MissingStateError, match="no RetNet state was passed"):
        hf(step, attention_mask=wide_mask)  # generate's step, cache dropped
    with pytest.raises(MissingStateError, match="no RetNet state was passed"):
        hf(step, attention_mask=wide_mask, cache=RetNetCache())  # an empty cache is no state either
    with pytest.raises(MissingStateError, match="cache_position starts at 6"):
        hf(step, cache_position=torch.tensor([6]))
    with pytest.raises(MissingStateError, match="the cache has seen 6"):
        hf(step, attention_mask=torch.ones(1, 9, dtype=torch.long), cache=out_cache(out))
    # the same step with its state, under either name, continues the sequence exactly
    full = hf(torch.cat([prompt, step], 1)).logits[:, -1]
    for name in ("cache", "past_key_values"):
        cache = out_cache(hf(prompt, use_cache=True))
        logits = hf(step, attention_mask=wide_mask, **{name: cache}).logits[:, -1]
        torch.testing.assert_close(logits, full, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="pass the cache once"):
        hf(step, cache=out_cache(out), past_key_values=out_cache(out))


def test_the_cache_comes_back_under_the_installed_release_field():
    hf = RetNetHFForCausalLM.from_retnet(tiny_core(30))
    out = hf(torch.randint(0, 30, (1, 3)), use_cache=True)
    assert OUTPUT_CACHE_FIELD in {f.name for f in dataclasses.fields(out)}
    assert isinstance(getattr(out, OUTPUT_CACHE_FIELD), RetNetCache)


def test_left_padded_batch_equals_each_prompt_alone():
    core = tiny_core(90, seed=1, dtype=torch.float64)
    hf = RetNetHFForCausalLM.from_retnet(core)
    prompts = [torch.randint(1, 90, (n,)) for n in (9, 4, 13)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
    batch = hf.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False, pad_token_id=0)
    for row, p in enumerate(prompts):
        alone = hf.generate(p[None], max_new_tokens=15, do_sample=False)
        assert batch[row, width:].tolist() == alone[0, len(p) :].tolist()
        ours, _ = retnet_generate(core, p[None], max_new_tokens=15, temperature=0)
        assert alone.tolist() == ours.tolist()


@torch.no_grad()
def sequence_logprob(hf, prompt_len: int, seq: torch.Tensor) -> float:
    """Sum of log-probabilities of the generated part of ``seq``, from one full forward pass."""
    logp = torch.log_softmax(hf(seq[None]).logits[0, :-1].double(), -1)
    targets = seq[1:]
    return float(logp[torch.arange(len(targets)), targets][prompt_len - 1 :].sum())


def test_beam_search_returns_the_best_scoring_beam():
    core = tiny_core(60, seed=5, dtype=torch.float64)
    hf = RetNetHFForCausalLM.from_retnet(core)
    prompt = torch.randint(0, 60, (1, 6))
    new = 8
    out = hf.generate(
        prompt,
        max_new_tokens=new,
        num_beams=4,
        num_return_sequences=4,
        do_sample=False,
        length_penalty=1.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    scores = out.sequences_scores.tolist()
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(s.tolist()) for s in out.sequences}) == 4
    # Each beam's score is its log-probability (per generated token) under a fresh full pass: the cache was
    # reordered correctly between steps.
    for seq, score in zip(out.sequences, scores):
        assert sequence_logprob(hf, 6, seq) / new == pytest.approx(score, abs=1e-5)
    best = hf.generate(prompt, max_new_tokens=new, num_beams=4, do_sample=False, length_penalty=1.0)
    assert best[0].tolist() == out.sequences[0].tolist()
    greedy = hf.generate(prompt, max_new_tokens=new, do_sample=False)
    assert sequence_logprob(hf, 6, best[0]) >= sequence_logprob(hf, 6, greedy[0]) - 1e-9


def test_sampling_is_seeded_and_respects_top_k():
    hf = RetNetHFForCausalLM.from_retnet(tiny_core(80, seed=2))
    prompt = torch.randint(0, 80, (2, 5))
    kw = dict(max_new_tokens=20, do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(hf.generate(prompt, **kw))
    assert torch.equal(runs[0], runs[1])
    # Every sampled token is among the 5 most likely given its prefix.
    logits = hf(runs[0]).logits[:, 4:-1]
    top5 = logits.topk(5, -1).indices
    assert (top5 == runs[0][:, 5:, None]).any(-1).all()
    greedy = hf.generate(prompt, max_new_tokens=20, do_sample=False)
    assert torch.equal(hf.generate(prompt, max_new_tokens=20, do_sample=True, top_k=1), greedy)


def test_cache_size_is_the_same_after_10_and_1000_tokens():
    core = tiny_core(50, seed=4)
    hf = RetNetHFForCausalLM.from_retnet(core)
    prompt = torch.randint(0, 50, (1, 5))
    sizes = {}
    for n in (10, 1000):
        out = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, return_dict_in_generate=True)
        assert out.sequences.shape[1] == 5 + n
        cache = out_cache(out)
        assert isinstance(cache, RetNetCache) and cache.get_seq_length() in (5 + n - 1, 5 + n)
        sizes[n] = cache.nbytes()
    cfg = core.config
    expected = cfg.num_layers * cfg.state_nbytes_per_layer(1) + 8  # float32 states + one int64 offset
    assert sizes[10] == sizes[1000] == expected


def test_generation_continues_from_a_returned_cache():
    hf = RetNetHFForCausalLM.from_retnet(tiny_core(70, seed=6, dtype=torch.float64))
    turn1 = torch.randint(0, 70, (1, 6))
    out = hf.generate(turn1, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    turn2 = torch.cat([out.sequences, torch.randint(0, 70, (1, 4))], 1)
    resumed = hf.generate(turn2, **{OUTPUT_CACHE_FIELD: out_cache(out)}, max_new_tokens=6, do_sample=False)
    fresh = hf.generate(turn2, max_new_tokens=6, do_sample=False)
    assert resumed.tolist() == fresh.tolist()


def test_cache_reorders_and_refuses_to_crop():
    hf = RetNetHFForCausalLM.from_retnet(tiny_core(30))
    out = hf(torch.randint(0, 30, (3, 4)), use_cache=True)
    cache = out_cache(out)
    first = cache.state.layers[0].clone()
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    assert torch.equal(cache.state.layers[0], first[[2, 2, 0]]) and cache.batch_size == 3
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(-1)
    with pytest.raises(TypeError, match="RetNetCache"):
        hf(torch.zeros(1, 1, dtype=torch.long), past_key_values=object())


def ascii_only_suppression(tokenizer) -> list[int]:
    """Ids of tokens that are not plain printable ASCII (so streamed text can be compared exactly)."""
    bad = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if not text.isascii() or not text.isprintable():
            bad.append(token_id)
    return bad


def test_text_iterator_streamer_streams_the_greedy_text(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    inputs = tokenizer("To be, or", return_tensors="pt")
    kw = dict(max_new_tokens=25, do_sample=False, suppress_tokens=ascii_only_suppression(tokenizer))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
    thread = threading.Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer, **kw))
    thread.start()
    pieces = list(streamer)
    thread.join()
    full = model.generate(**inputs, **kw)
    assert "".join(pieces) == tokenizer.decode(full[0, inputs["input_ids"].shape[1] :])
    assert len(pieces) > 1  # it really streamed


def test_text_generation_pipeline(model_path):
    generator = pipeline("text-generation", model=str(model_path))
    tokenizer = generator.tokenizer
    out = generator("To be", max_new_tokens=8, do_sample=False, return_full_text=False)
    ids = tokenizer("To be", return_tensors="pt")["input_ids"]
    expected = generator.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out[0]["generated_text"] == tokenizer.decode(expected[0, ids.shape[1] :])


def test_bfloat16_load_generates_with_a_float32_state(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert out.sequences.shape == (1, 8)
    assert all(s.dtype == torch.float32 for s in out_cache(out).state.layers)


def test_yoco_prefill_runs_the_cross_decoder_on_the_kept_positions_only():
    """``generate`` passes ``logits_to_keep=1`` at prefill; a YOCO model must then skip its cross-decoder for
    every other prompt position (the saving YOCO exists for) and still produce the same logits and tokens."""
    core = tiny_core(120, seed=5, dtype=torch.float64, architecture="yoco", num_layers=4)
    hf = RetNetHFForCausalLM.from_retnet(core)
    cross = core.model.layers[-1]
    seen: list[int] = []
    cross.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    prompt = torch.randint(0, 120, (2, 37))
    full = hf(prompt).logits
    kept = hf(prompt, logits_to_keep=1).logits
    assert seen == [37, 1] and kept.shape == (2, 1, 120)
    torch.testing.assert_close(kept, full[:, -1:], rtol=0, atol=1e-10)
    seen.clear()
    ours, _ = retnet_generate(core, prompt[:1], max_new_tokens=12, temperature=0)
    theirs = hf.generate(prompt[:1], max_new_tokens=12, do_sample=False)
    assert theirs.tolist() == ours.tolist() and seen[:1] == [1]  # prefill: one position through the cross-decoder
    with pytest.raises(ValueError, match="labels cannot be combined"):
        hf(prompt, labels=prompt, logits_to_keep=1)
