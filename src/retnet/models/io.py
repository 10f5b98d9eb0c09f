"""Model directories: ``config.json`` + ``model.safetensors``, written atomically, loaded without pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from retnet.models.config import ConfigError, RetNetConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A model directory or weights file that cannot be loaded; the message names the file or tensor."""


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous tensors, tied weights stored once (the lm_head is re-tied on load)."""
    sd = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_pretrained(model, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create model directory {directory}: {exc.strerror}") from exc
    tensors = state_dict_for_saving(model)
    atomic_write_bytes(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    atomic_write_bytes(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return directory


def load_state_dict_checked(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load ``tensors`` into ``model`` strictly, naming any missing, unexpected or mis-shaped tensor."""
    expected = state_dict_for_saving(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(
            f"{source}: missing tensor(s): {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor(s): {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
        )
    for name, ref in expected.items():
        if tensors[name].shape != ref.shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(ref.shape)}"
            )
    model.load_state_dict(tensors, strict=False)


def load_pretrained(directory: str | os.PathLike, *, map_location="cpu", dtype: torch.dtype | None = None):
    """Load a model directory written by :func:`save_pretrained` (or ``retnet train`` / ``retnet convert``)."""
    from retnet.models.retnet import RetNetForCausalLM

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory not found: {directory}")
    try:
        config = RetNetConfig.load(directory / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from exc
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"weights file not found: {weights}")
    try:
        tensors = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights file {weights}: {exc}") from exc
    with torch.device("meta"):
        model = RetNetForCausalLM(config)
    model = model.to_empty(device=map_location)
    load_state_dict_checked(model, tensors, str(weights))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
