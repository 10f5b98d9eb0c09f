"""RetNet models: the config and presets, the LM, its recurrent state, saving and loading."""

from retnet.models.config import PRESETS, ConfigError, RetNetConfig
from retnet.models.decode_step import DecodeStep, make_decode_step
from retnet.models.directory import CheckpointError
from retnet.models.io import save_pretrained
from retnet.models.quantize import QuantizeError, quantize_int8
from retnet.models.retnet import CausalLMOutput, RetNetBlock, RetNetForCausalLM, RetNetModel, load_pretrained
from retnet.models.state import RetNetState

__all__ = [
    "PRESETS",
    "CausalLMOutput",
    "CheckpointError",
    "ConfigError",
    "DecodeStep",
    "QuantizeError",
    "RetNetBlock",
    "RetNetConfig",
    "RetNetForCausalLM",
    "RetNetModel",
    "RetNetState",
    "load_pretrained",
    "make_decode_step",
    "quantize_int8",
    "save_pretrained",
]
