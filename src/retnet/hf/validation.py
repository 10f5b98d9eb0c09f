"""Strict checks of a model directory before ``transformers`` loads it.

``transformers`` only warns about missing or unexpected weights and keeps unknown config keys. Here a wrong
``config.json`` raises an error naming the field, and wrong weights (missing, unexpected or mis-shaped tensors)
raise one naming the tensor, the same checks ``retnet.models.load_pretrained`` makes. Only the safetensors
headers are read, not the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from retnet.models.config import RetNetConfig, load_model_config
from retnet.models.directory import WEIGHTS_FILE, WEIGHTS_INDEX_FILE, CheckpointError, read_json_file
from retnet.models.io import check_weight_files


def weight_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a directory: ``model.safetensors`` or the shards its index names."""
    single = directory / WEIGHTS_FILE
    if single.is_file():
        return [single]
    index = directory / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = read_json_file(index, what="weights index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"weights index {index} is not valid: 'weight_map' must map tensor names to files")
        return [directory / name for name in sorted(set(weight_map.values()))]
    raise CheckpointError(f"weights file not found: {single} (only safetensors weights are loaded)")


def check_model_directory(directory: Path) -> RetNetConfig:
    """Raise :class:`CheckpointError` naming the bad field or tensor; return the config when all is well."""
    from retnet.hf.configuration import _HF_KEYS  # imports transformers: only the HF loader calls this
    from retnet.models.retnet import RetNetForCausalLM

    config = load_model_config(directory, _HF_KEYS)  # keys transformers writes are allowed
    with torch.device("meta"):
        model = RetNetForCausalLM(config)
    check_weight_files(model, weight_files(directory))
    return config
