"""Incremental detokenisation and the chat template."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retnet.serving.chat_template import ChatTemplate
from retnet.serving.random_model import byte_tokenizer
from retnet.serving.tokenizer import IncrementalDetokenizer, ServingTokenizer


@given(st.text(max_size=30))
def test_incremental_detokenizer_reassembles_utf8(text):
    tok = ServingTokenizer(byte_tokenizer())
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    out = "".join(detok.push(i) for i in ids) + detok.flush()
    assert out == text


def test_chat_template_renders_and_closes():
    tpl = ChatTemplate()
    text = tpl.render([("system", "be brief"), ("user", "hi")])
    assert text == "<|system|>\nbe brief<|end|><|user|>\nhi<|end|><|assistant|>\n"
    assert tpl.closing(ended_turn=False) == "<|end|>" and tpl.closing(ended_turn=True) == ""


def test_chat_template_file_is_validated(tmp_path):
    (tmp_path / "chat_template.json").write_text('{"role_prefix": "no role here", "end_of_turn": "x"}')
    with pytest.raises(ValueError, match="role_prefix"):
        ChatTemplate.from_dir(tmp_path)
