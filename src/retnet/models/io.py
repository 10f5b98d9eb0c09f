"""Model weights in a model directory: ``config.json`` + ``model.safetensors`` written atomically, loaded without
pickle, every tensor name and shape checked against the model (from the file header) before anything is
allocated. File names, reading and atomic writing are :mod:`retnet.models.directory`'s."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from retnet.models.config import RetNetConfig, load_model_config
from retnet.models.directory import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    MissingFileError,
    atomic_write,
    atomic_write_json,
    check_model_dir,
    remove_leftover_temp_files,
)


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous tensors, tied weights stored once (the lm_head is re-tied on load)."""
    sd = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_model_dir(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` then ``config.json`` into ``directory`` (created if needed), each atomically."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create model directory {directory}: {exc.strerror}") from exc
    remove_leftover_temp_files(directory, (WEIGHTS_FILE, CONFIG_FILE))  # of a writer killed mid-save
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def save_pretrained(model, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of a model with a ``config`` into ``directory``."""
    return save_model_dir(directory, state_dict_for_saving(model), model.config.to_dict())


# safetensors' dtype names (the header's "dtype" field): the floating-point ones, and those of torch's dtypes.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_SAFETENSORS_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def check_state_dict(
    model: torch.nn.Module,
    shapes: dict[str, tuple[int, ...]],
    source: str,
    dtypes: dict[str, str] | None = None,
    *,
    cast_requested: bool = False,
) -> None:
    """Raise :class:`CheckpointError` naming any missing, unexpected or mis-shaped tensor of ``shapes``, or (with
    ``dtypes``, safetensors' names) a tensor whose kind differs from the model's: integer weights are never cast
    into floating-point parameters. Floating-point weights of another precision load, with a warning unless the
    caller asked for that dtype (``cast_requested``)."""
    expected = state_dict_for_saving(model)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing:
        raise CheckpointError(
            f"{source}: missing tensor(s): {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor(s): {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
        )
    for name, ref in expected.items():
        if tuple(shapes[name]) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(shapes[name])}, expected {tuple(ref.shape)}"
            )
    if dtypes is None:
        return
    cast = set()
    for name, ref in expected.items():
        stored = dtypes[name]
        if ref.dtype.is_floating_point != (stored in FLOAT_DTYPES):
            model_dtype = str(ref.dtype).removeprefix("torch.")
            raise CheckpointError(
                f"{source}: tensor {name} is stored as {stored}, but the model's is {model_dtype} "
                "(a tensor of another kind is never cast)"
            )
        if ref.dtype.is_floating_point and stored != _SAFETENSORS_NAMES.get(ref.dtype):
            cast.add(stored)
    if cast and not cast_requested:
        warnings.warn(
            f"{source}: weights stored as {', '.join(sorted(cast))} are loaded as "
            f"{str(next(iter(expected.values())).dtype).removeprefix('torch.')}",
            stacklevel=3,
        )


def load_state_dict_checked(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load ``tensors`` into ``model`` strictly, naming any missing, unexpected or mis-shaped tensor."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    dtypes = {name: _SAFETENSORS_NAMES.get(t.dtype, str(t.dtype)) for name, t in tensors.items()}
    check_state_dict(model, shapes, source, dtypes)
    model.load_state_dict(tensors, strict=False)


def tensor_headers(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Names, shapes and dtypes (safetensors' names) of the tensors in safetensors files, from their headers (no
    tensor is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                for name in fh.keys():
                    tensor = fh.get_slice(name)
                    shapes[name], dtypes[name] = tuple(tensor.get_shape()), tensor.get_dtype()
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    return shapes, dtypes


def check_weight_files(model: torch.nn.Module, files: list[Path], *, cast_requested: bool = False) -> None:
    """The tensors of ``files`` (headers only) against ``model``'s, which may live on the meta device."""
    source = str(files[0]) if len(files) == 1 else f"{files[0].parent} (sharded weights)"
    shapes, dtypes = tensor_headers(files)
    check_state_dict(model, shapes, source, dtypes, cast_requested=cast_requested)


def load_weights(
    model: torch.nn.Module, weights: Path, *, map_location="cpu", cast_requested: bool = False
) -> torch.nn.Module:
    """``model`` with ``weights`` loaded, checked first from the header; a model on the meta device is
    materialised on ``map_location`` only after that check passes."""
    if not weights.is_file():
        raise MissingFileError(f"weights file not found: {weights}")
    check_weight_files(model, [weights], cast_requested=cast_requested)
    try:
        tensors = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights file {weights}: {exc}") from exc
    if any(p.is_meta for p in model.parameters()):
        model = model.to_empty(device=map_location)
    model.load_state_dict(tensors, strict=False)
    return model


def load_model(
    build: Callable[[RetNetConfig], torch.nn.Module],
    directory: str | os.PathLike,
    *,
    map_location="cpu",
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """``build(config)`` with the weights of a model directory written by :func:`save_pretrained` (or
    ``retnet train`` / ``retnet convert``), in eval mode. The config is validated and the weights checked
    before any parameter is allocated."""
    directory = check_model_dir(directory)
    config = load_model_config(directory)
    with torch.device("meta"):
        model = build(config)
    if dtype is not None:  # built in the requested dtype: the weights are cast once, and only if they differ
        model = model.to(dtype)
    model = load_weights(model, directory / WEIGHTS_FILE, map_location=map_location, cast_requested=dtype is not None)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
