"""The engine through requests as the server makes them: batched decoding over rows at different offsets
equals decoding each alone, a turn of a stored conversation equals one pass over the whole conversation
(float64, tight tolerances), and faults stay with their request."""

from __future__ import annotations

import threading

import pytest
import torch

from retnet.data.tokenizers import Tokenizer
from retnet.generation import Engine, EngineOverloaded, SamplingParams, Sequence, generate
from retnet.models import RetNetForCausalLM
from retnet.serving.chat_template import ChatTemplate
from retnet.serving.random_model import byte_tokenizer
from tests.models.helpers import rel_err
from tests.serving.helpers import tiny_config


class Collect:
    def __init__(self) -> None:
        self.text, self.done, self.error = [], None, None
        self.event = threading.Event()

    def __call__(self, ev) -> None:
        kind, value = ev
        if kind == "text":
            self.text.append(value)
        elif kind != "first":
            self.done, self.error = (value, None) if kind == "done" else (None, value)
            self.event.set()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RetNetForCausalLM(tiny_config()).double().eval()


@pytest.fixture
def tok():
    return Tokenizer(byte_tokenizer(), "bpe", eos_token_id=256)


def run_engine(model, tok, jobs, **kw):
    """jobs: [(prompt_ids, params, state)] -> [Collect], all submitted at once."""
    engine = Engine(model, tok, threads=1, **kw)
    outs = [Collect() for _ in jobs]
    for (ids, params, st), out in zip(jobs, outs):
        engine.submit(Sequence(ids, params, out, state=st))
    engine.start()
    try:
        for out in outs:
            assert out.event.wait(60), "engine did not finish"
    finally:
        engine.stop()
    return outs


def test_batched_rows_at_different_offsets_match_each_alone(model, tok):
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (3, 17, 9, 30)]
    lengths = [12, 5, 20, 9]
    jobs = [(p, SamplingParams(max_tokens=m, temperature=0), None) for p, m in zip(prompts, lengths)]
    outs = run_engine(model, tok, jobs, prefill_chunk=8, max_batch=3)  # chunked prefill, rows join and leave
    for p, m, out in zip(prompts, lengths, outs):
        seqs, st = generate(model, torch.tensor([p]), max_new_tokens=m, temperature=0)
        gen = seqs[0, len(p) :].tolist()
        assert out.done.completion_tokens == m and out.done.finish_reason == "length"
        assert out.done.pending == gen[-1:]
        assert "".join(out.text) == tok.decode(gen)
        # the returned state covers everything but the pending token
        ref = model(seqs[:, :-1], use_cache=True, mode="parallel").state
        assert out.done.state.offset.tolist() == [len(p) + m - 1]
        for a, b in zip(out.done.state.layers, ref.layers):
            assert rel_err(a, b) < 1e-10


def test_second_turn_equals_one_pass_over_the_whole_conversation(model, tok):
    tpl = ChatTemplate()
    turn1 = tok.encode(tpl.render([("user", "Hello there")]))
    params = SamplingParams(max_tokens=10, temperature=0, end_of_turn=tpl.end_of_turn)
    (a,) = run_engine(model, tok, [(turn1, params, None)])
    pending = a.done.pending + tok.encode(tpl.closing(a.done.ended_turn))
    turn2 = tok.encode(tpl.render([("user", "And again?")]))
    (b,) = run_engine(model, tok, [(pending + turn2, params, a.done.state)])
    # one pass: the whole conversation as one prompt
    assert a.done.finish_reason == "length" and not a.done.ended_turn
    whole = turn1 + a.done.token_ids + tok.encode(tpl.end_of_turn) + turn2
    (c,) = run_engine(model, tok, [(whole, params, None)])
    assert "".join(b.text) == "".join(c.text) and b.done.completion_tokens == c.done.completion_tokens
    for x, y in zip(b.done.state.layers, c.done.state.layers):
        assert rel_err(x, y) < 1e-10
    assert torch.equal(b.done.state.offset, c.done.state.offset)


def test_stop_string_and_eos_end_the_reply(model, tok):
    prompt = tok.encode("abc")
    (free,) = run_engine(model, tok, [(prompt, SamplingParams(max_tokens=12, temperature=0), None)])
    text = "".join(free.text)
    stop = text[3:5]
    (cut,) = run_engine(model, tok, [(prompt, SamplingParams(max_tokens=12, temperature=0, stop=[stop]), None)])
    assert "".join(cut.text) == text[: text.find(stop)] and cut.done.finish_reason == "stop"
    eos_tok = Tokenizer(byte_tokenizer(), "bpe", eos_token_id=tok.encode(text[0])[0])
    (eos,) = run_engine(model, eos_tok, [(prompt, SamplingParams(max_tokens=12, temperature=0), None)])
    assert eos.done.finish_reason == "stop" and eos.done.ended_turn and eos.done.completion_tokens == 1


def test_seeded_sampling_is_reproducible_in_a_batch(model, tok):
    p = SamplingParams(max_tokens=15, temperature=1.0, top_k=50, seed=123)
    outs = run_engine(model, tok, [(tok.encode("x"), p, None), (tok.encode("yy"), p, None), (tok.encode("x"), p, None)])
    assert outs[0].text == outs[2].text


def test_cancelled_sequence_leaves_the_others_untouched(model, tok):
    engine = Engine(model, tok, threads=1)
    keep, drop = Collect(), Collect()
    seq = Sequence(tok.encode("drop me"), SamplingParams(max_tokens=500, temperature=0), drop)
    engine.submit(seq)
    engine.submit(Sequence(tok.encode("keep"), SamplingParams(max_tokens=20, temperature=0), keep))
    seq.cancel()
    engine.start()
    try:
        assert keep.event.wait(60)
    finally:
        engine.stop()
    (alone,) = run_engine(model, tok, [(tok.encode("keep"), SamplingParams(max_tokens=20, temperature=0), None)])
    assert keep.text == alone.text and drop.done is None


def test_queue_bound(model, tok):
    engine = Engine(model, tok, max_queue=2)
    for _ in range(2):
        engine.submit(Sequence([1], SamplingParams(max_tokens=1), lambda ev: None))
    with pytest.raises(EngineOverloaded):
        engine.submit(Sequence([1], SamplingParams(max_tokens=1), lambda ev: None))


class FailingRows(torch.nn.Module):
    """The model, except that a recurrent step raises when a row's offset passes ``poison_from`` (only the
    poisoned sequence starts there), and a prefill raises on the token ``poison_token``: faults inside the
    engine that belong to one request."""

    def __init__(self, model, poison_from: int = 10_000, poison_token: int = 7) -> None:
        super().__init__()
        self.inner, self.poison_from, self.poison_token = model, poison_from, poison_token
        self.config = model.config

    @property
    def device(self):
        return self.inner.device

    def forward(self, ids, *, state=None, mode="auto", **kw):
        if mode == "recurrent" and state is not None and bool((state.offset >= self.poison_from).any()):
            raise RuntimeError("injected decode fault")
        if mode != "recurrent" and bool((ids == self.poison_token).any()):
            raise RuntimeError("injected prefill fault")
        return self.inner(ids, state=state, mode=mode, **kw)


def test_faults_in_one_sequence_leave_eight_others_exactly_as_alone(model, tok):
    """A batched decode step that raises because of one row, a prefill that raises, and a row whose state is
    NaN (its logits are NaN) each fail their own request only; the 8 others produce the tokens they produce
    alone, and every request gets exactly one ending."""
    prompts = [torch.randint(8, 256, (n,)).tolist() for n in (3, 11, 5, 20, 8, 2, 14, 6)]
    params = SamplingParams(max_tokens=12, temperature=0)
    alone = [run_engine(model, tok, [(p, params, None)])[0] for p in prompts]
    far = model(torch.tensor([[40, 41]]), use_cache=True).state
    far.offset = torch.tensor([10_000])  # the poisoned row: its decode steps raise
    nan_state = model(torch.tensor([[42]]), use_cache=True).state
    nan_state.layers = [torch.full_like(t, float("nan")) for t in nan_state.layers]
    jobs = [(p, params, None) for p in prompts[:4]]
    jobs += [([50, 51], params, far), ([60, 7, 61], params, None), ([70], params, nan_state)]
    jobs += [(p, params, None) for p in prompts[4:]]
    outs = run_engine(FailingRows(model), tok, jobs, max_batch=16, prefill_chunk=64)
    failed = outs[4:7]
    assert [o.error.code for o in failed] == ["engine_error", "engine_error", "non_finite_logits"]
    assert all(o.done is None for o in failed)
    for got, want in zip(outs[:4] + outs[7:], alone):
        assert got.error is None and "".join(got.text) == "".join(want.text)
        assert got.done.token_ids == want.done.token_ids


def test_non_finite_logits_mid_decode_fail_that_row_only(model, tok):
    """A model that turns one row's logits NaN after a few steps: that request ends with a named error."""

    class NaNAfter(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner, self.config = inner, inner.config

        @property
        def device(self):
            return self.inner.device

        def forward(self, ids, **kw):
            out = self.inner(ids, **kw)
            state = kw.get("state")
            if state is not None and ids.shape[1] == 1:
                rows = (state.offset >= 5_000 + 3).nonzero().flatten()
                out.logits[rows] = float("nan")
            return out

    params = SamplingParams(max_tokens=10, temperature=0.8, seed=3)
    far = model(torch.tensor([[40]]), use_cache=True).state
    far.offset = torch.tensor([5_000])
    outs = run_engine(NaNAfter(model), tok, [([1, 2], params, None), ([9], params, far), ([3], params, None)])
    assert outs[1].error.code == "non_finite_logits" and "".join(outs[1].text)  # it had streamed some text
    (a,) = run_engine(model, tok, [([1, 2], params, None)])
    assert outs[0].done.token_ids == a.done.token_ids and outs[2].done is not None
