"""``RetNetHFForCausalLM``: our RetNet as a ``transformers`` ``PreTrainedModel`` with ``GenerationMixin``.

One implementation: the decoder is :class:`retnet.models.RetNetModel` itself, held as ``self.model`` next to
``self.lm_head``, exactly the attribute names of :class:`retnet.models.RetNetForCausalLM`. The weight names
(``model.layers.0.retention.q_proj.weight``, ..., ``lm_head.weight``) are therefore those of our own
``save_pretrained``, and one directory loads with either library. Weight initialisation is
``RetNetForCausalLM``'s own.

Generation: the state is carried in a :class:`RetNetCache`. The prompt is prefilled in one call (``mode="auto"``:
parallel up to ``retnet.ops.dispatch.PARALLEL_MAX_LEN`` tokens, chunkwise beyond, as ``retnet generate`` does),
then ``generate`` feeds one token per step, which runs the O(1) recurrent form. ``generate`` passes the whole 2D
attention mask every step; only its last ``T`` columns (those of the current input) are used: padding already seen
is in the state. ``transformers`` renamed the cache argument (``past_key_values`` -> ``cache``); both names are
accepted, and a step that continues a sequence without its state raises :class:`MissingStateError`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from retnet.hf.cache import RetNetCache, cache_field
from retnet.hf.configuration import RetNetHFConfig
from retnet.hf.validation import check_model_directory
from retnet.layers.norm import HeadNorm, RMSNorm
from retnet.models.retnet import RetNetForCausalLM, RetNetModel
from retnet.ops.dispatch import MODES

RETENTION_MODES = MODES

# The output field that carries the cache: ``cache`` in newer ``transformers`` releases, ``past_key_values`` before.
# Read from the installed release's own output class, so ``generate`` finds the state where it looks for it
# (:func:`retnet.hf.cache.output_cache` reads it back).
OUTPUT_CACHE_FIELD = cache_field(CausalLMOutputWithPast)


# Whether the installed release's PreTrainedModel._initialize_weights takes ``is_custom_code`` (newer releases).
_INIT_TAKES_CUSTOM_CODE = "is_custom_code" in inspect.signature(PreTrainedModel._initialize_weights).parameters


class MissingStateError(ValueError):
    """A forward call continues a sequence, but the recurrent state of the tokens before it was not passed."""


def _one_cache(*candidates: Any) -> RetNetCache | None:
    """The cache, whichever name it came under (``cache``, ``past_key_values``, ``cache_params``); at most one."""
    given = [c for c in candidates if c is not None]
    if len(given) > 1:
        raise ValueError("pass the cache once: as cache or as past_key_values, not both")
    if not given:
        return None
    if not isinstance(given[0], RetNetCache):
        raise TypeError(f"the cache must be a RetNetCache, got {type(given[0]).__name__}")
    return given[0]


def _check_continuation(
    cache: RetNetCache | None, attention_mask: torch.Tensor | None, cache_position: torch.Tensor | None, T: int
) -> None:
    """Refuse a call that continues a sequence without the state of what came before.

    ``generate`` signals a continuation by an ``attention_mask`` wider than the input (the columns already seen)
    and, in older releases, by ``cache_position``. Without the state those tokens would be silently forgotten.
    """
    seen = cache.seen_tokens if cache is not None and cache.is_initialized else 0
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > T:
        past = attention_mask.shape[1] - T
        if seen == 0:
            raise MissingStateError(
                f"attention_mask covers {past} column(s) before the input, but no RetNet state was passed "
                "(cache/past_key_values is missing or empty): the model would decode without its state"
            )
        if past != seen:
            raise MissingStateError(
                f"attention_mask covers {past} column(s) before the input, but the cache has seen {seen}"
            )
    if seen == 0 and cache_position is not None and cache_position.numel() > 0 and int(cache_position[0]) > 0:
        raise MissingStateError(
            f"cache_position starts at {int(cache_position[0])}, but no RetNet state was passed "
            "(cache/past_key_values is missing or empty): the model would decode without its state"
        )


class RetNetPreTrainedModel(PreTrainedModel):
    """Shared ``transformers`` plumbing: config class, weight init, no attention masks, a stateful cache."""

    config_class = RetNetHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["RetNetBlock"]
    _is_stateful = True  # a recurrent state cannot be rolled back: no assisted decoding
    # gradient_checkpointing_enable() finds RetNetModel.gradient_checkpointing and sets it (and the function).
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Our initialisation (``transformers`` guards it so that loaded weights are not touched)."""
        if isinstance(module, RetNetHFForCausalLM):
            RetNetForCausalLM.reset_parameters(module)  # embeddings, head and retention: the official init
        elif isinstance(module, nn.Linear):
            module.reset_parameters()  # PyTorch's default, as in a freshly built RetNetForCausalLM
        elif isinstance(module, (RMSNorm, HeadNorm)):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def _initialize_weights(self, module: nn.Module, *args: Any, **kwargs: Any) -> None:
        # Newer transformers releases pass ``is_custom_code`` and then skip parameter-less modules of "custom code"
        # (ours: the model and each retention layer own the init of their children). Our init goes through
        # torch.nn.init, which transformers guards while it initialises, so weights already loaded are left alone.
        if _INIT_TAKES_CUSTOM_CODE:
            return super()._initialize_weights(module, is_custom_code=False)
        return super()._initialize_weights(module)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model creates its own RetNetCache

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """``transformers``' loader, after a strict check of a local directory (names the bad field or tensor).

        Hub downloads are not pre-checked: ``transformers`` resolves them itself.
        """
        if pretrained_model_name_or_path is not None:
            local = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
            if local.is_dir() and not kwargs.get("gguf_file"):
                check_model_directory(local)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


class RetNetHFForCausalLM(RetNetPreTrainedModel, GenerationMixin):
    """RetNet language model for ``AutoModelForCausalLM``, ``generate``, ``pipeline``, ``Trainer`` and PEFT."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RetNetHFConfig) -> None:
        super().__init__(config)
        self.model = RetNetModel(config.to_retnet_config())
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_retnet(cls, model: RetNetForCausalLM) -> RetNetHFForCausalLM:
        """Wrap an existing :class:`RetNetForCausalLM`: its modules are shared, not copied."""
        with torch.device("meta"):  # no throw-away initialisation: the modules are replaced at once
            hf = cls(RetNetHFConfig.from_retnet_config(model.config))
        hf.model, hf.lm_head = model.model, model.lm_head
        return hf.train(model.training)

    def to_retnet(self) -> RetNetForCausalLM:
        """A :class:`RetNetForCausalLM` sharing this model's modules (for ``retnet.generation``)."""
        with torch.device("meta"):
            core = RetNetForCausalLM(self.config.to_retnet_config())
        core.model, core.lm_head = self.model, self.lm_head
        return core.train(self.training)

    # ------------------------------------------------------------------ embeddings (resize, PEFT)
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: RetNetCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        retention_mode: str = "auto",
        past_key_values: RetNetCache | None = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits (and the loss for ``labels``, shifted inside as in ``transformers``) and the updated cache.

        The cache arrives as ``cache`` or, under the name older ``transformers`` releases use, ``past_key_values``;
        it is returned under the name the installed release's output class declares. ``attention_mask`` may cover
        the cached columns as well (``generate`` passes it so); its last ``T`` columns must describe ``input_ids``.
        A call that continues a sequence (a mask longer than the input, or ``cache_position`` past 0) without the
        state raises: decoding never silently restarts from nothing. ``output_hidden_states`` returns only the final
        (normed) hidden state. ``retention_mode`` picks the retention form (``auto``: recurrent for one token,
        parallel up to ``retnet.ops.dispatch.PARALLEL_MAX_LEN`` tokens, chunkwise beyond).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if retention_mode not in RETENTION_MODES:
            raise ValueError(f"retention_mode must be one of {RETENTION_MODES}, got {retention_mode!r}")
        if kwargs.get("position_ids") is not None:
            raise ValueError(
                "RetNet derives positions from its state and attention_mask; position_ids is not supported"
            )
        if kwargs.get("output_attentions"):
            raise ValueError("RetNet has no attention weights to return (output_attentions=True is not supported)")
        cache = _one_cache(cache, past_key_values, kwargs.pop("cache_params", None))
        x = input_ids if input_ids is not None else inputs_embeds
        B, T = x.shape[:2]
        _check_continuation(cache, attention_mask, cache_position, T)
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training
        use_cache = use_cache or cache is not None

        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
                raise ValueError(
                    f"attention_mask must have shape [batch, >= {T}] for input of shape [{B}, {T}], "
                    f"got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask[:, -T:]
            if bool(mask.all()):
                mask = None  # no padding here: the fast path

        n_keep = logits_to_keep if isinstance(logits_to_keep, int) and logits_to_keep > 0 else 0
        if n_keep and labels is not None:
            raise ValueError("labels cannot be combined with logits_to_keep")
        state = cache.state if cache is not None else None
        hidden, new_state = self.model(
            input_ids,
            attention_mask=mask,
            state=state,
            use_cache=use_cache,
            mode=retention_mode,
            inputs_embeds=inputs_embeds,
            logits_to_keep=0 if output_hidden_states else n_keep,  # YOCO: cross-decoder on kept rows only
        )
        out_cache = None
        if use_cache:
            out_cache = cache if cache is not None else RetNetCache()
            out_cache.set_state(new_state, T)

        logits = self.lm_head(hidden[:, -n_keep:] if n_keep else hidden)
        loss = None
        if labels is not None:
            if mask is not None:
                labels = labels.masked_fill(mask == 0, -100)  # padded positions never count, as in RetNetForCausalLM
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.vocab_size,
                num_items_in_batch=kwargs.get("num_items_in_batch"),
            )

        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=(hidden,) if output_hidden_states else None,
            **{OUTPUT_CACHE_FIELD: out_cache},
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Atomic write of ``config.json`` + ``model.safetensors`` (our format) and ``generation_config.json``.

        Hub pushes, sharding, custom ``state_dict`` and the like are delegated to ``transformers``.
        """
        kwargs.pop("safe_serialization", None)
        is_main_process = kwargs.pop("is_main_process", True)
        if kwargs:
            return super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if not is_main_process:
            return None
        from retnet.models.io import save_pretrained

        directory = save_pretrained(self, save_directory)
        if self.can_generate():
            self.generation_config.save_pretrained(directory)
        return None
