"""Training checkpoints for exact resume, written atomically.

One file per checkpoint, ``<run>/checkpoints/ckpt-<step>.pt``, holding the full (unsharded) model and
optimizer state, the scheduler, the data position, the RNG states and the configs. It is written to a
temporary file, fsynced and renamed, so a crash or kill during a save leaves the previous checkpoint intact
and never a half-written one. Files are read with ``torch.load(weights_only=True)``: tensors, numbers and
strings only, never arbitrary pickled objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retnet.models.directory import atomic_write, remove_leftover_temp_files
from retnet.training.errors import TrainError

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in a run folder as ``(step, path)``, oldest first (temporary files ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts on the CPU (gathers FSDP shards; works for DDP and plain modules)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model_state: dict,
    optimizer_state: dict,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    data_position: dict[str, int],
    model_config: dict,
    train_config: dict,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``ckpt-<step>.pt`` atomically, then delete all but the newest ``keep`` checkpoints."""
    payload = {
        "format": FORMAT_VERSION,
        "step": step,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "data": dict(data_position),
        "rng": rng_state(),
        "model_config": model_config,
        "train_config": train_config,
        "extra": extra or {},
    }
    path = checkpoint_path(run_dir, step)
    if path.parent.is_dir():
        remove_leftover_temp_files(path.parent)  # left by a save that was killed
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"checkpoint {str(path)!r} cannot be read: {str(exc).splitlines()[0]}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise TrainError(f"checkpoint {str(path)!r} is not a retnet training checkpoint (format {FORMAT_VERSION})")
    return payload


def check_same_model(payload: dict[str, Any], model_config: dict, path: str | Path) -> None:
    """Refuse a checkpoint of another model: name the first config field that differs."""
    saved = payload.get("model_config", {})
    for key in sorted(set(saved) | set(model_config)):
        if saved.get(key) != model_config.get(key):
            raise TrainError(
                f"checkpoint {str(path)!r} is from another model: {key} is {saved.get(key)!r} there, "
                f"{model_config.get(key)!r} here"
            )


def restore(
    payload: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load model, optimizer, scheduler, scaler and RNG states from a checkpoint (every rank reads the file)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        model,
        optimizer,
        model_state_dict=payload["model"],
        optim_state_dict=payload["optimizer"],
        options=StateDictOptions(full_state_dict=True),
    )
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    set_rng_state(payload["rng"])
