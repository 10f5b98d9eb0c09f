"""Stop strings, incremental detokenisation and the chat template."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retnet.serving.chat_template import ChatTemplate
from retnet.serving.random_model import byte_tokenizer
from retnet.serving.stops import StopMatcher
from retnet.serving.tokenizer import IncrementalDetokenizer, ServingTokenizer


def feed(matcher: StopMatcher, pieces: list[str]) -> str:
    out = "".join(matcher.push(p) for p in pieces)
    return out if matcher.stopped else out + matcher.flush()


@given(st.text(alphabet="ab<|end>x", max_size=40), st.lists(st.integers(1, 5), max_size=20))
def test_stop_matcher_equals_cutting_the_whole_text(text, cuts):
    stops = ["<|end|>", "ba"]
    pieces, i = [], 0
    for c in cuts:
        pieces.append(text[i : i + c])
        i += c
    pieces.append(text[i:])
    m = StopMatcher(stops)
    got = feed(m, pieces)
    hits = [p for p in (text.find(s) for s in stops) if p >= 0]
    assert got == (text[: min(hits)] if hits else text)
    assert m.stopped == bool(hits)


def test_stop_matcher_holds_back_a_possible_stop_prefix():
    m = StopMatcher(["<|end|>"])
    assert m.push("hi <|e") == "hi "
    assert m.push("nd|> more") == ""
    assert m.stopped and m.matched == "<|end|>"


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
