"""Registering RetNet with ``transformers``' Auto classes through their public ``register`` methods.

``import retnet.hf`` calls :func:`register`, after which ``AutoConfig``, ``AutoModelForCausalLM`` and
``AutoTokenizer`` load our model directories (``model_type: "retnet"``). ``import retnet`` alone does not: it keeps
the command line free of the seconds that importing ``transformers``' Auto machinery costs.
"""

from __future__ import annotations


def register() -> None:
    """Register RetNet with ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoTokenizer`` (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from retnet.hf.configuration import RetNetHFConfig
    from retnet.hf.modeling import RetNetHFForCausalLM

    AutoConfig.register(RetNetHFConfig.model_type, RetNetHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(RetNetHFConfig, RetNetHFForCausalLM, exist_ok=True)
    AutoTokenizer.register(RetNetHFConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)
