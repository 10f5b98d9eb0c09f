"""Stop strings on streamed text: the one matcher the server and the chat share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from retnet.generation.stops import StopMatcher


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
