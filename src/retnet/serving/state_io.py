"""A ``RetNetState`` (batch 1) as one safetensors file: flat tensors plus the nesting in the metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save as save_tensors_to_bytes
from safetensors.torch import save_file

from retnet.layers.attention import KVCache
from retnet.models import RetNetState
from retnet.models.directory import atomic_write


def _flatten(x: Any, prefix: str, out: dict[str, torch.Tensor]) -> Any:
    """Tensors into ``out`` under dotted names; returns the structure with names in place of tensors."""
    if isinstance(x, torch.Tensor):
        out[prefix] = x.detach().contiguous().cpu()
        return {"t": prefix}
    if isinstance(x, (list, tuple)):
        return {"l": [_flatten(v, f"{prefix}.{i}", out) for i, v in enumerate(x)]}
    if isinstance(x, dict):
        return {"d": {k: _flatten(v, f"{prefix}.{k}", out) for k, v in x.items()}}
    if isinstance(x, KVCache):  # attention layers of hybrids, YOCO's shared cache
        return {"kv": {name: _flatten(getattr(x, name), f"{prefix}.{name}", out) for name in ("k", "v", "mask")}}
    if x is None:
        return {"n": None}
    raise TypeError(f"cannot store a state entry of type {type(x).__name__}")


def _unflatten(spec: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "t" in spec:
        return tensors[spec["t"]]
    if "l" in spec:
        return [_unflatten(v, tensors) for v in spec["l"]]
    if "d" in spec:
        return {k: _unflatten(v, tensors) for k, v in spec["d"].items()}
    if "kv" in spec:
        return KVCache(**{k: _unflatten(v, tensors) for k, v in spec["kv"].items()})
    return None


def state_tensors(state: RetNetState) -> dict[str, torch.Tensor]:
    """Every tensor of a state by its dotted name (layers, shared caches and the offsets)."""
    out: dict[str, torch.Tensor] = {}
    _flatten([state.layers, state.shared], "layers", out)
    out["offset"] = state.offset
    return out


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None."""
    return next((k for k, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())), None)


def _serializable(state: RetNetState, metadata: dict[str, str] | None) -> tuple[dict[str, torch.Tensor], dict]:
    """The flat tensors and the metadata (format, nesting, caller's entries) of one state."""
    tensors: dict[str, torch.Tensor] = {}
    spec = _flatten(state.layers, "layers", tensors)
    shared = _flatten(state.shared, "shared", tensors)
    tensors["offset"] = state.offset.detach().contiguous().cpu()
    meta = {"format": "retnet-state", "structure": json.dumps(spec), "shared": json.dumps(shared), **(metadata or {})}
    return tensors, meta


def save_state(path: Path, state: RetNetState, metadata: dict[str, str] | None = None) -> int:
    """Write atomically; returns the file size in bytes."""
    tensors, meta = _serializable(state, metadata)
    atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))
    return path.stat().st_size


def state_to_bytes(state: RetNetState, metadata: dict[str, str] | None = None) -> bytes:
    """The bytes :func:`save_state` would write (safetensors), for stores that keep states off the file system."""
    tensors, meta = _serializable(state, metadata)
    return save_tensors_to_bytes(tensors, metadata=meta)


class StateFileError(ValueError):
    """A state file that cannot be used: missing, not a regular file, damaged, foreign or non-finite."""


def load_state(path: Path, device: str | torch.device = "cpu") -> tuple[RetNetState, dict[str, str]]:
    """Read a state file written by :func:`save_state` (no pickle); returns the state and its metadata.

    Anything wrong with the file (a symlink, truncation, garbage, a foreign layout, NaN or inf values)
    raises :class:`StateFileError` naming the file and the cause."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise StateFileError(f"{path} is not a regular file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != "retnet-state":
                raise StateFileError(f"{path} is not a retnet state file")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except StateFileError:
        raise
    except Exception as exc:  # safetensors errors: a damaged or foreign file
        raise StateFileError(f"{path} is damaged or not a retnet state file ({type(exc).__name__}: {exc})") from exc
    return _assemble(str(path), tensors, meta), meta


def state_from_bytes(data: bytes, name: str) -> tuple[RetNetState, dict[str, str]]:
    """Read bytes written by :func:`state_to_bytes` (no pickle); ``name`` says where they came from in errors,
    which are :class:`StateFileError` as for files."""
    try:
        if len(data) < 8:
            raise ValueError(f"{len(data)} bytes is too short")
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            raise ValueError(f"header of {size} bytes in {len(data)}")
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        if meta.get("format") != "retnet-state":
            raise StateFileError(f"{name} is not a retnet state")
        tensors = load_tensors_from_bytes(data)
    except StateFileError:
        raise
    except Exception as exc:  # safetensors or header errors: damaged or foreign bytes
        raise StateFileError(f"{name} is damaged or not a retnet state ({type(exc).__name__}: {exc})") from exc
    return _assemble(name, tensors, meta), meta


def _assemble(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> RetNetState:
    """The state from its flat tensors and metadata, checked: offset valid, every value finite."""
    try:
        layers = _unflatten(json.loads(meta["structure"]), tensors)
        shared = _unflatten(json.loads(meta["shared"]), tensors) if "shared" in meta else None
        state = RetNetState(layers, tensors["offset"], shared)
    except Exception as exc:  # JSON or structure errors: a damaged or foreign state
        raise StateFileError(f"{name} is damaged or not a retnet state file ({type(exc).__name__}: {exc})") from exc
    offset = state.offset
    if offset.dtype != torch.long or offset.shape != (1,) or int(offset[0]) < 0:
        raise StateFileError(f"{name} has an invalid offset {offset.tolist()} ({offset.dtype})")
    bad = first_non_finite(tensors)
    if bad is not None:
        raise StateFileError(f"{name} holds non-finite values (NaN or inf) in {bad}")
    return state


def check_state(state: RetNetState, like: RetNetState) -> None:
    """Raise ValueError unless ``state`` has the layer structure, shapes and dtypes of ``like``.

    Attention KV caches grow with the conversation, so their length (and their optional padding mask) is not
    compared; everything else must match exactly.
    """
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    _flatten([state.layers, state.shared], "layers", a)
    _flatten([like.layers, like.shared], "layers", b)
    a = {k: v for k, v in a.items() if not k.endswith(".mask")}
    b = {k: v for k, v in b.items() if not k.endswith(".mask")}
    if a.keys() != b.keys():
        raise ValueError("state has a different layer structure than the model")
    for k in a:
        sa, sb = tuple(a[k].shape), tuple(b[k].shape)
        if k.endswith((".k", ".v")) and len(sa) == len(sb) == 4:  # [B, H, L, D]: any length L
            sa, sb = sa[:2] + sa[3:], sb[:2] + sb[3:]
        if sa != sb or a[k].dtype != b[k].dtype:
            raise ValueError(f"state tensor {k} is {tuple(a[k].shape)} {a[k].dtype}, expected {tuple(b[k].shape)}")
