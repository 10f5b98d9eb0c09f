"""lm-evaluation-harness's ``HFLM`` / our ``RetNetLM`` on RetNet: the harness's sums equal our own computations."""

from __future__ import annotations

import math

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from retnet.generation import generate as retnet_generate
from retnet.hf import RetNetHFForCausalLM, load_tokenizer
from retnet.hf.harness import RetNetLM, bundled_tasks, nul_token, separator_token
from retnet.training.evaluate import evaluate
from tests.hf.helpers import byte_tokenizer, model_dir, tiny_core

NEWLINE = 10  # the byte tokenizer's id of "\n": the last token of the document separator


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A tiny random model with the byte tokenizer (id i is byte i), as a directory and as loaded modules."""
    core = tiny_core(256, seed=3)
    path = model_dir(tmp_path_factory.mktemp("harness") / "byte", core, byte_tokenizer())
    return path, core


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@torch.no_grad()
def continuation_logprob(core, context: list[int], continuation: list[int]) -> float:
    """Sum of log p(continuation | context) from one forward pass of our own model (float64 log-softmax)."""
    ids = torch.tensor([context + continuation])
    logp = torch.log_softmax(core(ids[:, :-1]).logits[0].double(), -1)
    targets = ids[0, 1:]
    picked = logp[torch.arange(len(targets)), targets]
    return float(picked[len(context) - 1 :].sum())


def test_retnet_lm_fills_in_the_special_tokens_our_tokenizers_lack(byte_model):
    path, _ = byte_model
    lm = RetNetLM(pretrained=str(path), device="cpu", batch_size=2)
    assert isinstance(lm.model, RetNetHFForCausalLM)
    assert lm.prefix_token_id == NEWLINE == separator_token(lm.tokenizer)
    assert lm.tokenizer.pad_token_id == 0 == nul_token(lm.tokenizer)
    assert lm.eot_token_id is None and lm.tok_decode(None) is None
    assert len(lm.tokenizer) == 256  # no token added beyond the model's embeddings
    assert "retnet_shakespeare" in bundled_tasks()


def test_loglikelihood_of_a_right_padded_batch_equals_our_model(byte_model):
    path, core = byte_model
    tok = load_tokenizer(path)
    # The plain HFLM works too, given a prefix token (for the empty context).
    lm = HFLM(pretrained=RetNetHFForCausalLM.from_retnet(core), tokenizer=tok, prefix_token_id=NEWLINE, batch_size=4)
    pairs = [("To be, or not", " to be"), ("a", "bc"), ("", "ROMEO:"), ("Whether 'tis nobler", " in the mind")]
    got = lm.loglikelihood(requests("loglikelihood", *pairs))
    for (context, continuation), (ll, _) in zip(pairs, got):
        ctx = list(context.encode()) or [NEWLINE]
        ref = continuation_logprob(core, ctx, list(continuation.encode()))
        assert math.isclose(ll, ref, rel_tol=1e-5), (context, ll, ref)


def test_loglikelihood_rolling_equals_our_bits_per_byte(byte_model):
    path, core = byte_model
    lm = RetNetLM(pretrained=str(path), device="cpu", batch_size=2, max_length=16)
    doc = "But soft, what light through yonder window breaks? It is the east!"[:48]  # 3 windows of 16 tokens
    (ll,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (doc,)))
    # Ours: the document after the separator token, in windows of 16 predicted tokens (retnet eval's windows).
    tokens = torch.tensor([NEWLINE, *doc.encode()], dtype=torch.int32)
    ours = evaluate(core, tokens, torch.ones(256, dtype=torch.long), seq_len=16, batch_size=2)
    assert ours.tokens == 48 and ours.bytes == len(doc.encode())
    assert math.isclose(-ll, ours.nll, rel_tol=1e-5)
    assert math.isclose(-ll / math.log(2) / len(doc.encode()), ours.bits_per_byte, rel_tol=1e-5)


def test_generate_until_left_padded_batch_equals_each_prompt_alone(model_path):
    """Greedy, BPE tokenizer: a batch of three prompts of different lengths, one call, equals each alone."""
    prompts = ["To be, or not to be", "the", "whether 'tis nobler in"]
    kwargs = {"until": ["question"], "max_gen_toks": 12, "do_sample": False}
    batched = RetNetLM(pretrained=str(model_path), device="cpu", batch_size=3)
    alone = RetNetLM(pretrained=str(model_path), device="cpu", batch_size=1)
    batch_out = batched.generate_until(requests("generate_until", *[(p, dict(kwargs)) for p in prompts]))
    tok = alone.tokenizer
    core = alone.model.to_retnet()
    for prompt, text in zip(prompts, batch_out):
        (single,) = alone.generate_until(requests("generate_until", (prompt, dict(kwargs))))
        assert text == single
        ids = torch.tensor([tok.encode(prompt)])
        ours, _ = retnet_generate(core, ids, max_new_tokens=12, temperature=0)
        ours_text = tok.decode(ours[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
        assert text == ours_text.split("question")[0]
