"""Generation: recurrent decoding equals the full pass; seeds reproduce; state continues conversations."""

from __future__ import annotations

import pytest
import torch

from retnet.generation import filter_logits, generate, sample_next, stream_generate
from tests.models.helpers import rel_err, tiny_model


def test_greedy_generation_matches_argmax_of_full_pass():
    model = tiny_model()
    prompt = torch.randint(0, 97, (1, 7))
    seqs, state = generate(model, prompt, max_new_tokens=12, temperature=0)
    logits = model(seqs, mode="parallel").logits
    assert torch.equal(logits[0, 6:-1].argmax(-1), seqs[0, 7:])
    assert state.offset.tolist() == [19]
    full = model(seqs, mode="parallel", use_cache=True).state
    for a, b in zip(state.layers, full.layers):
        assert rel_err(a, b) < 1e-9


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    prompt = torch.randint(0, 97, (2, 5))
    runs = [
        generate(
            model,
            prompt,
            max_new_tokens=15,
            temperature=0.9,
            top_k=20,
            top_p=0.9,
            generator=torch.Generator().manual_seed(7),
        )[0]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_left_padded_batch_generates_like_each_alone():
    model = tiny_model()
    a, b = torch.randint(1, 97, (1, 9)), torch.randint(1, 97, (1, 4))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = (torch.arange(9)[None] >= torch.tensor([[0], [5]])).long()
    seqs, _ = generate(model, ids, attention_mask=mask, max_new_tokens=8, temperature=0)
    alone_b, _ = generate(model, b, max_new_tokens=8, temperature=0)
    assert torch.equal(seqs[1, 9:], alone_b[0, 4:])


def test_stream_state_continues_a_conversation():
    model = tiny_model()
    turn1, turn2 = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 4))
    stream = stream_generate(model, turn1, max_new_tokens=5, temperature=0)
    reply = torch.stack(list(stream), 1)
    out = model(turn2, state=stream.state, use_cache=True)
    whole = model(torch.cat([turn1, reply, turn2], 1), use_cache=True, mode="chunkwise")
    for a, b in zip(out.state.layers, whole.state.layers):
        assert rel_err(a, b) < 1e-9
    assert rel_err(out.logits[:, -1], whole.logits[:, -1]) < 1e-9


def test_eos_stops_generation():
    model = tiny_model()
    prompt = torch.randint(0, 97, (1, 3))
    greedy, _ = generate(model, prompt, max_new_tokens=5, temperature=0)
    eos = int(greedy[0, 3])
    seqs, _ = generate(model, prompt, max_new_tokens=5, temperature=0, eos_token_id=eos)
    assert seqs.shape[1] == 4 and int(seqs[0, -1]) == eos


def test_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, :2]).all()
    probs = torch.softmax(logits, -1)[0]
    kept = ~torch.isinf(filter_logits(logits, top_p=float(probs[3]) + 1e-6)[0])
    assert kept.tolist() == [False, False, True, True]
    assert int(sample_next(logits, temperature=0)[0]) == 3
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0)


def test_vocab_size_limits_sampling_to_the_tokenizer_ids():
    """A tokenizer smaller than the model's (padded) embedding: ids at or past its size are never sampled."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    seqs, _ = generate(model, torch.randint(0, 97, (4, 3)), max_new_tokens=64, vocab_size=10, generator=gen)
    assert int(seqs[:, 3:].max()) < 10
    seqs, _ = generate(model, torch.randint(0, 97, (4, 3)), max_new_tokens=64, generator=gen)
    assert int(seqs[:, 3:].max()) >= 10  # without the limit the whole vocabulary is sampled
