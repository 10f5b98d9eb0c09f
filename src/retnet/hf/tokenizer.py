"""Our ``tokenizer.json`` as a ``transformers`` ``PreTrainedTokenizerFast``.

:func:`save_tokenizer` (:func:`retnet.models.directory.write_tokenizer_config`) adds a ``tokenizer_config.json``
next to the ``tokenizer.json`` that ``retnet train`` writes (byte or BPE tokenizer), so
``AutoTokenizer.from_pretrained(DIR)`` gives a ``PreTrainedTokenizerFast``. Padding is on the left (decoder-only
generation needs it); decoding does not "clean up" spaces, so ``decode(encode(text)) == text``.
"""

from __future__ import annotations

import os
from typing import Any

from retnet.models.directory import write_tokenizer_config as save_tokenizer

__all__ = ["load_tokenizer", "save_tokenizer"]


def load_tokenizer(directory: str | os.PathLike, **kwargs: Any):
    """``AutoTokenizer.from_pretrained(directory)`` (writes nothing; imports ``transformers``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), **kwargs)
