"""The engine against full recomputation (float64): every variant, rows joining and leaving a running batch,
chunked prefill, snapshots, stop strings split across tokens, the swappable decode step."""

from __future__ import annotations

import logging

import pytest
import torch

from retnet.data.tokenizers import Tokenizer
from retnet.generation import Engine, SamplingParams, Sequence, generate
from retnet.models.decode_step import make_decode_step
from tests.models.helpers import rel_err, tiny_model

VARIANTS = {
    "plain": {},
    "gated": {"gated": True},
    "hybrid": {"block_types": "GA"},
    "yoco": {"architecture": "yoco", "num_layers": 4},
}
GREEDY = SamplingParams(max_tokens=9, temperature=0)


def variant(name: str, seed: int = 0):
    return tiny_model(seed=seed, **VARIANTS[name])


def full_argmax(model, ids: list[int]) -> list[int]:
    """Argmax of one full forward over ``ids``, at every position."""
    with torch.no_grad():
        return model(torch.tensor([ids]), mode="parallel").logits[0].argmax(-1).tolist()


def assert_recomputes(model, prompt: list[int], generated: list[int]) -> None:
    """Each greedy token is the argmax of a full forward over prompt + the tokens before it."""
    assert generated
    assert full_argmax(model, prompt + generated)[len(prompt) - 1 : -1] == generated


def tokens_of(engine: Engine, seqs: list[Sequence]) -> list[list[int]]:
    done = {}
    for seq, (kind, value) in engine.run(seqs):
        assert kind != "error", value
        if kind == "done":
            done[id(seq)] = value.token_ids
    return [done[id(s)] for s in seqs]


def alone(model, prompt: list[int], n: int) -> list[int]:
    seqs, _ = generate(model, torch.tensor([prompt]), max_new_tokens=n, temperature=0)
    return seqs[0, len(prompt) :].tolist()


@pytest.mark.parametrize("step", ["forward", "lean"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_greedy_tokens_equal_full_recomputation_in_a_batch(name, step):
    """Rows of different lengths, prefilled in chunks, decoded together in slots (more requests than slots, so
    rows leave and others take their slots), each equal to the argmax of a full forward pass; with the model's
    forward as the step and with the lean step the CLI and the server use (``make_decode_step``)."""
    model = variant(name)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 17, 9, 30, 1)]
    limits = [9, 4, 12, 6, 7]
    seqs = [Sequence(p, SamplingParams(max_tokens=m, temperature=0)) for p, m in zip(prompts, limits)]
    decode_step = make_decode_step(model) if step == "lean" else None
    outs = tokens_of(Engine(model, max_batch=3, prefill_chunk=8, decode_step=decode_step), seqs)
    for p, m, got in zip(prompts, limits, outs):
        assert len(got) == m
        assert_recomputes(model, p, got)


@pytest.mark.parametrize("name", ["plain", "hybrid", "yoco"])
def test_left_padded_batch_gives_each_row_what_it_gives_alone(name):
    model = variant(name)
    a, b = torch.randint(1, 97, (1, 9)), torch.randint(1, 97, (1, 4))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = (torch.arange(9)[None] >= torch.tensor([[0], [5]])).long()
    seqs, state = generate(model, ids, attention_mask=mask, max_new_tokens=8, temperature=0)
    assert seqs[0, 9:].tolist() == alone(model, a[0].tolist(), 8)
    assert seqs[1, 9:].tolist() == alone(model, b[0].tolist(), 8)
    assert state.offset.tolist() == [9 + 8, 4 + 8]  # each row's own tokens, padding not counted


@pytest.mark.parametrize("name", ["plain", "hybrid", "yoco"])
def test_sequences_joining_and_leaving_a_running_batch_equal_each_alone(name):
    """Requests submitted at different iterations with different prompt lengths, one cancelled half way:
    every other request gets exactly its tokens alone, and the cancelled one gets no ending."""
    model = variant(name)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 21, 2, 11, 8)]
    limits = [14, 6, 10, 3, 9]
    events: dict[int, list] = {i: [] for i in range(5)}
    seqs = [
        Sequence(p, SamplingParams(max_tokens=m, temperature=0), lambda ev, i=i: events[i].append(ev))
        for i, (p, m) in enumerate(zip(prompts, limits))
    ]
    engine = Engine(model, max_batch=4, prefill_chunk=6)
    schedule = {0: [0, 1], 2: [2], 3: [3], 6: [4]}  # iteration -> requests submitted before it
    for it in range(40):
        for i in schedule.get(it, []):
            engine.submit(seqs[i])
        if it == 5:
            seqs[1].cancel()
        engine.iterate()
    assert not engine.rows and not engine.prefilling and engine.slots.n == 0
    assert not any(kind in ("done", "error") for kind, _ in events[1])
    for i in (0, 2, 3, 4):
        kinds = [kind for kind, _ in events[i]]
        assert kinds.count("done") == 1 and "error" not in kinds
        fin = events[i][-1][1]
        assert fin.token_ids == alone(model, prompts[i], limits[i])


@pytest.mark.parametrize("name", ["plain", "hybrid", "yoco"])
def test_the_finished_state_and_pending_tokens_continue_exactly(name):
    """``state`` covers prompt + reply but the pending token; feeding it continues like one pass."""
    model = variant(name)
    prompt = torch.randint(0, 97, (13,)).tolist()
    seq = Sequence(prompt, SamplingParams(max_tokens=6, temperature=0))
    (fin,) = [v for _, (k, v) in Engine(model, max_batch=2, prefill_chunk=5).run([seq]) if k == "done"]
    whole = prompt + fin.token_ids
    assert fin.pending == fin.token_ids[-1:] and fin.state.offset.tolist() == [len(whole) - 1]
    with torch.no_grad():
        ref = model(torch.tensor([whole[:-1]]), use_cache=True, mode="parallel")
        nxt = model(torch.tensor([fin.pending]), state=fin.state, use_cache=True)
        full = model(torch.tensor([whole]), mode="parallel").logits[:, -1]
    assert rel_err(fin.last_logits, ref.logits[0, -1]) < 1e-10
    assert rel_err(nxt.logits[:, -1], full) < 1e-10


@pytest.mark.parametrize("name", ["plain", "hybrid", "yoco"])
def test_chunked_prefill_of_a_long_prompt_equals_one_shot(name, caplog):
    model = variant(name)
    ids = torch.randint(0, 97, (700,)).tolist()
    engine = Engine(model, prefill_chunk=64)
    with caplog.at_level(logging.INFO, logger="retnet.generation"):
        logits, state = engine.prefill(ids)
    with torch.no_grad():
        one = model(torch.tensor([ids]), use_cache=True, mode="chunkwise")
    assert rel_err(logits, one.logits[0, -1]) < 1e-9
    assert torch.equal(state.offset, one.state.offset)
    for a, b in zip(state.layers, one.state.layers):
        if isinstance(a, torch.Tensor):
            assert rel_err(a, b) < 1e-9
    assert "prefill: 512 of 700 prompt tokens" in caplog.text  # progress every 8 chunks


@pytest.mark.parametrize("name", ["plain", "hybrid"])
def test_snapshots_equal_a_separate_prefill_of_that_prefix(name):
    model = variant(name)
    prompt = torch.randint(0, 97, (20,)).tolist()
    snaps = []
    seq = Sequence(prompt, GREEDY, lambda ev: snaps.append(ev[1]) if ev[0] == "snapshot" else None)
    seq.snapshot_at = [5, 12, 20]
    (with_snaps,) = tokens_of(Engine(model, prefill_chunk=8), [seq])
    assert [p for p, _, _ in snaps] == [5, 12, 20]  # chunk ends aligned to the positions (8 would pass 5)
    for pos, state, logits in snaps:
        with torch.no_grad():
            ref = model(torch.tensor([prompt[:pos]]), use_cache=True, mode="parallel")
        assert state.offset.tolist() == [pos] and rel_err(logits, ref.logits[0, -1]) < 1e-10
        a = model(torch.tensor([[3]]), state=state, use_cache=True).logits
        b = model(torch.tensor([[3]]), state=ref.state, use_cache=True).logits
        assert rel_err(a, b) < 1e-10
    assert with_snaps == alone(model, prompt, GREEDY.max_tokens)


def test_snapshot_positions_outside_the_prompt_are_refused():
    with pytest.raises(ValueError, match="snapshot_at"):
        Sequence([1, 2, 3], GREEDY, snapshot_at=[4])
    with pytest.raises(ValueError, match="snapshot_at"):
        Sequence([1, 2, 3], GREEDY, snapshot_at=[0])


def test_a_request_can_start_from_a_snapshot_without_prefill():
    """The snapshot's state and logits are a whole prompt: the reply equals the one from the full prompt."""
    model = variant("plain")
    prompt = torch.randint(0, 97, (10,)).tolist()
    snaps = []
    seq = Sequence(prompt, GREEDY, lambda ev: snaps.append(ev[1]) if ev[0] == "snapshot" else None, snapshot_at=[10])
    (first,) = tokens_of(Engine(model), [seq])
    _, state, logits = snaps[0]
    (again,) = tokens_of(Engine(model), [Sequence([], GREEDY, state=state, logits=logits)])
    assert again == first


FAR = 1000  # a row that starts from a state at this offset follows the second script


class Scripted(torch.nn.Module):
    """A model whose next token is forced by position: a row whose prompt ended at offset ``base`` picks
    ``script[offset - base]`` next; rows started from a state at offset ``FAR`` follow the second script, so
    each row keeps its script whatever the batch composition."""

    def __init__(self, inner, prompt_len: int, scripts: tuple[list[int], list[int]]) -> None:
        super().__init__()
        self.inner, self.config, self.prompt_len, self.scripts = inner, inner.config, prompt_len, scripts

    @property
    def device(self):
        return self.inner.device

    def forward(self, ids, **kw):
        out = self.inner(ids, **kw)
        forced = torch.full_like(out.logits[:, -1], -1e4)
        for row, offset in enumerate(out.state.offset.tolist()):
            far = offset >= FAR
            script = self.scripts[far]
            forced[row, script[min(offset - self.prompt_len - far * FAR, len(script) - 1)]] = 0.0
        out.logits = forced[:, None]
        return out


def test_a_stop_string_split_across_tokens_never_leaks():
    """ "\\n\\n" as two "\\n" tokens, and "STOP" over three tokens: nothing of either reaches the text, in a
    batch of two rows; a partial match that is not completed is released, in order."""
    tok = Tokenizer.byte()
    inner = tiny_model(vocab_size=256)
    model = Scripted(inner, 2, ([ord(c) for c in "ab\n\ncd"], [ord(c) for c in "a\nbSTxSTOPz"]))
    far = inner(torch.tensor([[1]]), use_cache=True).state
    far.offset = torch.tensor([FAR])
    params = SamplingParams(max_tokens=12, temperature=0, stop=["\n\n", "STOP"])
    texts: list[list[str]] = [[], []]
    seqs = [
        Sequence([1, 1], params, lambda ev, r=r: texts[r].append(ev[1]) if ev[0] == "text" else None, state=st)
        for r, st in enumerate([None, far])
    ]
    fins = [v for _, (k, v) in Engine(model, tok, max_batch=2, prefill_chunk=2).run(seqs) if k == "done"]
    assert "".join(texts[0]) == "ab" and "".join(texts[1]) == "a\nbSTx"
    assert [f.finish_reason for f in fins] == ["stop", "stop"] and len(fins[1].token_ids) == 10


def test_every_decode_step_goes_through_the_one_step_function():
    model = variant("plain")
    calls = []

    def step(ids, state):
        calls.append(ids.shape[0])
        out = model(ids, state=state, use_cache=True, mode="recurrent")
        return out.logits[:, -1], out.state

    prompts = [[1, 2, 3], [4, 5]]
    seqs = [Sequence(p, SamplingParams(max_tokens=5, temperature=0)) for p in prompts]
    got = tokens_of(Engine(model, decode_step=step), seqs)
    assert got == [alone(model, p, 5) for p in prompts]
    assert sum(calls) == 2 * 4  # 4 steps per request: the fifth token stays pending


def test_closing_the_synchronous_driver_early_cancels_its_sequences():
    model = variant("plain")
    engine = Engine(model)
    seq = Sequence([1, 2, 3], SamplingParams(max_tokens=50, temperature=0), token_events=True)
    events = engine.run([seq])
    for _, (kind, _) in events:
        if kind == "token":
            break
    events.close()
    assert seq.cancelled and not engine.rows and engine.slots.n == 0


def test_zero_max_tokens_returns_the_prompt_state():
    model = variant("plain")
    seq = Sequence([5, 6, 7], SamplingParams(max_tokens=0))
    ((_, (kind, fin)),) = [e for e in Engine(model).run([seq]) if e[1][0] != "first"]
    assert kind == "done" and fin.token_ids == [] and fin.pending == [] and fin.state.offset.tolist() == [3]
