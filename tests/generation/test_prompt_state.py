"""The engine's prompt state: ``keep_prompt_state`` returns the state and last logits after the prompt, and a
sequence started from them (no prompt) decodes exactly what the original did, with no forward pass
(float64)."""

from __future__ import annotations

import pytest
import torch

from retnet.generation import Engine, SamplingParams, Sequence
from tests.generation.test_engine_requests import Collect, model, tok  # noqa: F401 (fixtures)
from tests.models.helpers import rel_err


def run(model, tok, seq_args: dict, params: SamplingParams) -> tuple[Collect, dict]:  # noqa: F811 (fixture names)
    engine = Engine(model, tok, threads=1)
    out = Collect()
    engine.submit(Sequence(params=params, emit=out, **seq_args))
    engine.start()
    try:
        assert out.event.wait(60), "engine did not finish"
    finally:
        engine.stop()
    return out, engine.load()


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 3)])
def test_a_sequence_from_a_stored_prompt_state_equals_the_original(model, tok, temperature, seed):  # noqa: F811
    ids = tok.encode("<|user|>\nHello there<|end|><|assistant|>\n")
    params = SamplingParams(max_tokens=12, temperature=temperature, seed=seed)
    first, load = run(model, tok, {"prompt_ids": ids, "keep_prompt_state": True}, params)
    assert first.error is None and load["tokens_prefilled"] == len(ids)
    state, logits = first.done.prompt_state
    with torch.no_grad():
        want = model(torch.tensor([ids]), use_cache=True, mode="recurrent")
    assert rel_err(logits, want.logits[:, -1]) < 1e-12
    again, load = run(model, tok, {"prompt_ids": [], "state": state.clone(), "logits": logits.clone()}, params)
    assert again.error is None and load["tokens_prefilled"] == 0
    assert again.done.token_ids == first.done.token_ids and "".join(again.text) == "".join(first.text)
    assert again.done.prompt_tokens == 0 and again.done.prompt_state is None


def test_an_empty_prompt_needs_a_state_and_logits(model, tok):  # noqa: F811
    with pytest.raises(ValueError, match="or a state with its logits"):
        Sequence([], SamplingParams(max_tokens=1), Collect(), logits=torch.zeros(1, 257))
