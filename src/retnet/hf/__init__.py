"""Hugging Face ``transformers`` integration: Auto classes, ``generate``, ``pipeline``, ``Trainer``, PEFT.

After ``import retnet``, ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoTokenizer`` load our model
directories (see :mod:`retnet.hf.registration` for how this stays free at import time). The classes are imported
lazily from here, because importing ``transformers`` takes seconds:

- :class:`RetNetHFConfig` (``retnet.hf.configuration``): a ``PreTrainedConfig`` with our ``RetNetConfig`` fields;
- :class:`RetNetHFForCausalLM` (``retnet.hf.modeling``): ``PreTrainedModel`` + ``GenerationMixin`` around our
  ``RetNetModel`` (same weight names, so one directory serves both libraries);
- :class:`RetNetCache` (``retnet.hf.cache``): the recurrent state as a ``transformers`` ``Cache``;
- :func:`save_tokenizer` (``retnet.hf.tokenizer``): ``tokenizer_config.json`` for a ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from retnet.hf.registration import install, register
from retnet.hf.tokenizer import load_tokenizer, save_tokenizer

_LAZY = {
    "RetNetHFConfig": "retnet.hf.configuration",
    "RetNetHFForCausalLM": "retnet.hf.modeling",
    "RetNetPreTrainedModel": "retnet.hf.modeling",
    "RetNetCache": "retnet.hf.cache",
    "check_model_directory": "retnet.hf.validation",
}

__all__ = ["install", "register", "save_tokenizer", "load_tokenizer", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retnet.hf' has no attribute {name!r}")
