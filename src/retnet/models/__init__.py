"""RetNet models: the config and presets, the LM, its recurrent state, saving and loading."""

from retnet.models.config import PRESETS, ConfigError, RetNetConfig
from retnet.models.directory import CheckpointError
from retnet.models.io import save_pretrained
from retnet.models.retnet import CausalLMOutput, RetNetBlock, RetNetForCausalLM, RetNetModel, load_pretrained
from retnet.models.state import RetNetState

__all__ = [
    "PRESETS",
    "CausalLMOutput",
    "CheckpointError",
    "ConfigError",
    "RetNetBlock",
    "RetNetConfig",
    "RetNetForCausalLM",
    "RetNetModel",
    "RetNetState",
    "load_pretrained",
    "save_pretrained",
]
