"""Strict checks of a model directory before ``transformers`` loads it.

``transformers`` only warns about missing or unexpected weights and keeps unknown config keys. Here a wrong
``config.json`` raises an error naming the field, and wrong weights (missing, unexpected or mis-shaped tensors)
raise one naming the tensor, the same checks ``retnet.models.load_pretrained`` makes. Only the safetensors
headers are read, not the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from retnet.models.config import MODEL_TYPE, ConfigError, RetNetConfig, read_config_json
from retnet.models.io import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_state_dict_checked

INDEX_NAME = "model.safetensors.index.json"


def read_config(directory: Path, hf_keys: frozenset[str] = frozenset()) -> RetNetConfig:
    """``config.json`` as a :class:`RetNetConfig`; keys in ``hf_keys`` (written by ``transformers``) are allowed."""
    path = directory / CONFIG_NAME
    try:
        data = read_config_json(path)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise CheckpointError(f"{path}: model_type must be {MODEL_TYPE!r}, got {data['model_type']!r}")
    ours = {k: v for k, v in data.items() if k not in hf_keys or k == "model_type"}
    try:
        return RetNetConfig.from_dict(ours)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def weight_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a directory: ``model.safetensors`` or the shards its index names."""
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"weights index {index} is not valid: {exc!r}") from exc
        return [directory / name for name in sorted(set(weight_map.values()))]
    raise CheckpointError(f"weights file not found: {single} (only safetensors weights are loaded)")


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in safetensors files, from their headers."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                for name in fh.keys():
                    shapes[name] = tuple(fh.get_slice(name).get_shape())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    return shapes


def check_model_directory(directory: Path) -> RetNetConfig:
    """Raise :class:`CheckpointError` naming the bad field or tensor; return the config when all is well."""
    from retnet.hf.configuration import _HF_KEYS  # imports transformers: only the HF loader calls this
    from retnet.models.retnet import RetNetForCausalLM

    config = read_config(directory, _HF_KEYS)
    files = weight_files(directory)
    shapes = tensor_shapes(files)
    with torch.device("meta"):
        model = RetNetForCausalLM(config)
        tensors = {name: torch.empty(shape) for name, shape in shapes.items()}
    source = str(files[0]) if len(files) == 1 else f"{directory} (sharded weights)"
    load_state_dict_checked(model, tensors, source)
    return config
