"""A directory written by ``retnet train`` (BPE tokenizer) is a ``transformers`` model directory."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from retnet.data.tokenizers import Tokenizer
from retnet.generation import generate as retnet_generate
from retnet.models import RetNetForCausalLM
from retnet.training.trainer import train
from tests.training.helpers import small_corpus, tiny_config


def test_retnet_train_directory_loads_with_auto_classes(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, small_corpus(tmp_path / "data", chars=8000), tokenizer="bpe", vocab_size=300, steps=2)
    train(cfg, quiet=True, progress=False)
    assert (out / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    ours = Tokenizer.load(out)
    text = "ROMEO: But soft, what light"
    assert tokenizer(text)["input_ids"] == ours.encode(text)
    assert tokenizer.decode(ours.encode(text)) == text
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = torch.tensor([ours.encode(text)])
    expected, _ = retnet_generate(RetNetForCausalLM.from_pretrained(out), prompt, max_new_tokens=12, temperature=0)
    assert model.generate(prompt, max_new_tokens=12, do_sample=False).tolist() == expected.tolist()
