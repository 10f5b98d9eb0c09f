"""Hugging Face ``transformers`` integration: Auto classes, ``generate``, ``pipeline``, ``Trainer``, PEFT.

Importing this package registers RetNet with ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoTokenizer``
(:func:`register`), so ``AutoModelForCausalLM.from_pretrained(DIR)`` loads our model directories:

- :class:`RetNetHFConfig` (``retnet.hf.configuration``): a ``PreTrainedConfig`` with our ``RetNetConfig`` fields;
- :class:`RetNetHFForCausalLM` (``retnet.hf.modeling``): ``PreTrainedModel`` + ``GenerationMixin`` around our
  ``RetNetModel`` (same weight names, so one directory serves both libraries);
- :class:`RetNetCache` (``retnet.hf.cache``): the recurrent state as a ``transformers`` ``Cache``;
- :func:`save_tokenizer` (``retnet.hf.tokenizer``): ``tokenizer_config.json`` for a ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

from retnet.hf.cache import RetNetCache
from retnet.hf.configuration import RetNetHFConfig
from retnet.hf.modeling import MissingStateError, RetNetHFForCausalLM, RetNetPreTrainedModel
from retnet.hf.registration import register
from retnet.hf.tokenizer import load_tokenizer, save_tokenizer
from retnet.hf.validation import check_model_directory

register()

__all__ = [
    "MissingStateError",
    "RetNetCache",
    "RetNetHFConfig",
    "RetNetHFForCausalLM",
    "RetNetPreTrainedModel",
    "check_model_directory",
    "load_tokenizer",
    "register",
    "save_tokenizer",
]
