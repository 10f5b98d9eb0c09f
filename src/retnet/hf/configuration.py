"""``RetNetHFConfig``: a ``transformers`` config that carries exactly the fields of :class:`RetNetConfig`.

The fields are not copied here: they are read from the ``RetNetConfig`` dataclass, so a field added there is a
field here. Every construction builds (and so validates) a ``RetNetConfig``; a bad value raises
:class:`~retnet.models.ConfigError` naming the field. ``config.json`` is written in our own format (the
``RetNetConfig`` fields and ``"model_type": "retnet"``, nothing else), so one directory serves both
``retnet.models`` and ``transformers``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig as PreTrainedConfig

from retnet.models.config import MODEL_TYPE, ConfigError, RetNetConfig, config_fields
from retnet.models.directory import CONFIG_FILE, atomic_write_text, read_json_file

RETNET_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RetNetConfig))

# Keys ``transformers`` itself writes into or passes through a config dict; anything else in a ``config.json``
# that is not a RetNetConfig field is a mistake and is reported by name. The base class's attributes are read from
# a default instance (public API), not from its internals.
_HF_KEYS = frozenset(PreTrainedConfig().to_dict()) | {
    "model_type",
    "transformers_version",
    "architectures",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "name_or_path",
    "use_cache",
    "num_labels",
    "output_attentions",
    "attn_implementation",
    "experts_implementation",
    "_commit_hash",
    "auto_map",
}


class RetNetHFConfig(PreTrainedConfig):
    """``transformers`` view of a :class:`RetNetConfig` (same field names and values)."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    # Names other ``transformers`` code looks for.
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}

    def __init__(self, **kwargs: Any) -> None:
        core = {name: kwargs.pop(name) for name in RETNET_FIELDS if name in kwargs}
        retnet_config = RetNetConfig(**core)  # validates; ConfigError names the field
        for name in RETNET_FIELDS:
            setattr(self, name, getattr(retnet_config, name))
        use_cache = kwargs.pop("use_cache", True)
        super().__init__(**kwargs)
        self.use_cache = use_cache

    # ------------------------------------------------------------------ conversions
    def to_retnet_config(self) -> RetNetConfig:
        """The plain :class:`RetNetConfig` the model is built from."""
        return RetNetConfig(**{name: getattr(self, name) for name in RETNET_FIELDS})

    @classmethod
    def from_retnet_config(cls, config: RetNetConfig, **kwargs: Any) -> RetNetHFConfig:
        return cls(**{name: getattr(config, name) for name in RETNET_FIELDS}, **kwargs)

    # ------------------------------------------------------------------ (de)serialisation in our format
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """Build from a ``config.json`` dict; a key that is neither ours nor ``transformers``' is an error."""
        config_fields(config_dict, _HF_KEYS)  # ConfigError names a wrong model_type or unknown key
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        """``transformers``' config-file reader, replaced by our size-limited one (errors name the file)."""
        return cls._decode_special_floats(read_json_file(json_file))

    def to_dict(self) -> dict[str, Any]:
        """Our ``config.json`` format: the RetNetConfig fields and ``model_type`` (what ``RetNetConfig.load`` reads)."""
        return self.to_retnet_config().to_dict()

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``config.json`` atomically in our format (``push_to_hub`` is delegated to ``transformers``)."""
        if push_to_hub:
            return super().save_pretrained(save_directory, push_to_hub=True, **kwargs)
        directory = Path(save_directory)
        if directory.is_file():
            raise ConfigError(f"save_directory {directory} is a file, not a directory")
        atomic_write_text(directory / CONFIG_FILE, self.to_json_string())
