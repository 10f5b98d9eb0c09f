"""What every checkpoint converter shares: its error and report types, reading state dicts without unpickling
(a single file, or a Hugging Face checkpoint directory with shards), tensor checks that name the tensor, and
building our model from a config and converted tensors.

The format-specific converters (:mod:`~retnet.models.convert_torchscale`, :mod:`~retnet.models.convert_fla`,
:mod:`~retnet.models.convert_syncdoth`) only map names, shapes and options.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retnet.models.config import ConfigError, RetNetConfig
from retnet.models.directory import (
    CONFIG_FILE,
    MAX_TOKENIZER_BYTES,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    CheckpointError,
    parse_tokenizer,
    read_json_file,
    read_text,
)

# transformers' PyTorch weight files (read with torch.load(weights_only=True)), after the safetensors ones.
TORCH_WEIGHTS_FILE = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_FILE = "pytorch_model.bin.index.json"


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file, key, tensor or config field."""


@dataclass
class ConversionReport:
    """What was inferred from the checkpoint (printed by ``retnet convert``)."""

    prefix: str = ""
    nested_key: str | None = None
    decay: str = "official"
    tied: bool = False
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint(path: str | Path) -> Any:
    """Read ``path`` without unpickling arbitrary objects: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ConversionError(f"cannot read safetensors file {path}: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"cannot load {path} with torch.load(weights_only=True): {first}. Only tensors and plain containers "
            "are accepted (a full fairseq checkpoint also pickles its config): save just the state dict, e.g. "
            "torch.save(ckpt['model'], 'state_dict.pt'), or save it as .safetensors"
        ) from exc


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face checkpoint directory: one ``model.safetensors``, the shards its index
    names, or (without safetensors) ``pytorch_model.bin`` or its shards."""
    for single, index in ((WEIGHTS_FILE, WEIGHTS_INDEX_FILE), (TORCH_WEIGHTS_FILE, TORCH_WEIGHTS_INDEX_FILE)):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            data = read_json_file(directory / index, what="weight index", error=ConversionError)
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{directory / index}: no 'weight_map' object")
            names = sorted(set(map(str, weight_map.values())))
            bad = [n for n in names if Path(n).name != n]
            if bad:
                raise ConversionError(f"{directory / index}: shard name {bad[0]!r} is not a file in {directory}")
            return [directory / n for n in names]
    raise ConversionError(
        f"no weights in {directory}: expected {WEIGHTS_FILE}, {WEIGHTS_INDEX_FILE}, {TORCH_WEIGHTS_FILE} or "
        f"{TORCH_WEIGHTS_INDEX_FILE}"
    )


def read_hf_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``config.json`` and all tensors of a Hugging Face model directory (``save_pretrained`` layout)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"checkpoint directory not found: {directory}")
    config = read_json_file(directory / CONFIG_FILE, error=ConversionError)
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        part = load_checkpoint(path)
        if not isinstance(part, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in part.items()):
            raise ConversionError(f"{path}: not a flat state dict of named tensors")
        tensors.update(part)
    return config, tensors


def read_source_tokenizer(path: str | Path, what: str = "tokenizer file") -> tuple[str, Any] | None:
    """The text of ``path`` (a ``tokenizer.json``, or a checkpoint directory holding one) and its
    ``tokenizers.Tokenizer``; ``None`` for a directory without one. A file that is missing, too large or not a
    tokenizer is a :class:`~retnet.models.directory.CheckpointError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.exists():
            return None
    text = read_text(path, MAX_TOKENIZER_BYTES, what=what)
    return text, parse_tokenizer(text, path)


# ---------------------------------------------------------------------------------------------- checks
def need(sd: dict[str, torch.Tensor], name: str, source: str, hint: str = "") -> torch.Tensor:
    """``sd[name]``, or a :class:`ConversionError` naming the missing tensor."""
    if name not in sd:
        raise ConversionError(f"{source}: missing tensor {name!r}" + (f" ({hint})" if hint else ""))
    return sd[name]


def check_shape(sd: dict[str, torch.Tensor], name: str, expected: tuple[int, ...], source: str, why: str) -> None:
    """A :class:`ConversionError` naming the tensor unless it exists with shape ``expected``."""
    got = tuple(need(sd, name, source).shape)
    if got != expected:
        raise ConversionError(f"{source}: tensor {name!r} has shape {got}, expected {expected} ({why})")


def check_no_unexpected(sd: dict[str, torch.Tensor], known: set[str], source: str) -> None:
    """A :class:`ConversionError` naming up to five tensors of ``sd`` that are not in ``known``."""
    unexpected = sorted(set(sd) - known)
    if unexpected:
        raise ConversionError(
            f"{source}: unexpected tensor(s) {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
        )


def make_config(source: str, **fields: Any) -> RetNetConfig:
    """A :class:`RetNetConfig`; an invalid one is a :class:`ConversionError` naming the source and field."""
    try:
        return RetNetConfig(**fields)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConversionError(f"{source}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- building
def build_model(config: RetNetConfig, tensors: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> Any:
    """A :class:`~retnet.models.RetNetForCausalLM` in eval mode holding ``tensors`` (our names; tied weights once),
    allocated once in ``dtype`` (no random initialisation first)."""
    from retnet.models.io import load_state_dict_checked
    from retnet.models.retnet import RetNetForCausalLM

    with torch.device("meta"):
        model = RetNetForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}
    try:
        load_state_dict_checked(model, tensors, source)
    except CheckpointError as exc:  # the converters check every name and shape first
        raise ConversionError(str(exc)) from exc
    model.tie_weights()
    return model.eval()
