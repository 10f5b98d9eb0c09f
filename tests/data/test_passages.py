"""Held-out speeches: the documents of the bundled lm-eval task."""

from __future__ import annotations

import pytest

from retnet.data.corpus import CorpusError, load_corpus, split_corpus
from retnet.data.passages import heldout_speeches


def test_speeches_come_from_the_validation_split_only(tmp_path):
    speech = "**PUCK**  \nIf we shadows have offended,  \nThink but this, and all is mended."
    short = "**OBERON**  \nAway."
    text = "\n".join(f"line {i} of the play" for i in range(200)) + f"\n\n{speech}\n\n_Exit_\n\n{short}\n"
    (tmp_path / "play.md").write_text(text, encoding="utf-8")
    corpus = load_corpus([str(tmp_path)])
    train, val = split_corpus(corpus, 0.2)
    assert heldout_speeches(corpus, 0.2) == [speech]  # stage direction and one-line speech left out
    assert speech in val and speech not in train
    assert heldout_speeches(corpus, 0.2, min_lines=1) == [speech, short]


def test_the_embedded_corpus_has_hundreds_of_unseen_speeches():
    corpus = load_corpus()
    train, _ = split_corpus(corpus, 0.05)
    speeches = heldout_speeches(corpus)
    assert len(speeches) > 500
    assert all(s.startswith("**") and s.count("\n") >= 2 for s in speeches)
    assert not any(s in train for s in speeches[:50])


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="min_lines must be >= 1"):
        heldout_speeches(min_lines=0)
    (tmp_path / "prose.txt").write_text("no speeches here\n" * 100, encoding="utf-8")
    with pytest.raises(CorpusError, match="has no speeches"):
        heldout_speeches(load_corpus([str(tmp_path)]))
