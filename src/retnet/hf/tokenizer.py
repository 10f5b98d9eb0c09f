"""Our ``tokenizer.json`` as a ``transformers`` ``PreTrainedTokenizerFast``.

:func:`save_tokenizer` adds a ``tokenizer_config.json`` next to the ``tokenizer.json`` that ``retnet train``
writes (byte or BPE tokenizer), so ``AutoTokenizer.from_pretrained(DIR)`` gives a ``PreTrainedTokenizerFast``.
``tokenizer.json`` itself is left untouched. It does not import ``transformers`` (the trainer calls it).
Padding is on the left (decoder-only generation needs it); decoding does not "clean up" spaces, so
``decode(encode(text)) == text``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from retnet.models.directory import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, atomic_write_text, read_tokenizer_json


def _vocab(tokenizer_json: Path) -> dict[str, int]:
    data = read_tokenizer_json(tokenizer_json)
    vocab = dict(data.get("model", {}).get("vocab", {}) or {})
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", []) or []})
    return vocab


def save_tokenizer(
    directory: str | os.PathLike,
    *,
    model_max_length: int | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
) -> Path:
    """Write ``tokenizer_config.json`` (a ``PreTrainedTokenizerFast``) for the ``tokenizer.json`` in ``directory``.

    Special tokens, when given, must be tokens of the vocabulary (our tokenizers have none by default).
    Returns the path written. Raises ``FileNotFoundError`` when there is no ``tokenizer.json``.
    """
    directory = Path(directory)
    tokenizer_json = directory / TOKENIZER_FILE
    if not tokenizer_json.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {str(directory)!r}: save the tokenizer first")
    vocab = _vocab(tokenizer_json)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if model_max_length is not None:
        if model_max_length < 1:
            raise ValueError(f"model_max_length must be >= 1, got {model_max_length}")
        config["model_max_length"] = int(model_max_length)
    for name, token in (
        ("bos_token", bos_token),
        ("eos_token", eos_token),
        ("pad_token", pad_token),
        ("unk_token", unk_token),
    ):
        if token is None:
            continue
        if token not in vocab:
            raise ValueError(f"{name} {token!r} is not a token of {tokenizer_json}")
        config[name] = token
    path = directory / TOKENIZER_CONFIG_FILE
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return path


def load_tokenizer(directory: str | os.PathLike, **kwargs: Any):
    """``AutoTokenizer.from_pretrained(directory)`` (writes nothing; imports ``transformers``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), **kwargs)
