"""Held-out speeches of a play-script corpus: the documents of the bundled lm-evaluation-harness task.

The embedded Shakespeare is Markdown in which a speech is one blank-line-separated block that starts with the
speaker in bold (``**PUCK**``) followed by its lines. The speeches are taken from the validation split of
:func:`retnet.data.corpus.split_corpus` (the default ``val_fraction`` of ``retnet train``), so a model trained on
the corpus never saw them, and they are scored one by one: each speech is a document.
"""

from __future__ import annotations

from retnet.data.corpus import DOCUMENT_SEPARATOR, Corpus, CorpusError, load_corpus, split_corpus

SPEAKER_MARK = "**"


def heldout_speeches(corpus: Corpus | None = None, val_fraction: float = 0.05, min_lines: int = 2) -> list[str]:
    """The speeches (speaker line + at least ``min_lines`` lines) of the validation split, in corpus order.

    ``corpus`` defaults to the embedded Shakespeare. Raises ``ValueError`` for a ``min_lines`` below 1 or a
    ``val_fraction`` outside (0, 1), and :class:`~retnet.data.corpus.CorpusError` for a corpus without speeches.
    """
    if min_lines < 1:
        raise ValueError(f"min_lines must be >= 1, got {min_lines}")
    corpus = corpus or load_corpus()
    _, val_text = split_corpus(corpus, val_fraction)
    speeches = []
    for block in val_text.split(DOCUMENT_SEPARATOR):
        block = block.strip("\n")
        lines = block.split("\n")
        if block.startswith(SPEAKER_MARK) and len(lines) > min_lines:
            speeches.append(block)
    if not speeches:
        raise CorpusError(
            f"the validation split of {corpus.describe()} has no speeches (a block that starts with "
            f"{SPEAKER_MARK!r} and has at least {min_lines} line(s) after it)"
        )
    return speeches
