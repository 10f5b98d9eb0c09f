"""Refusing, before any work, a run whose model or batches cannot fit in the device's memory.

The estimate is a lower bound from the settings alone (no model is built), so it never refuses a run that
fits: float32 weights, gradients and the two AdamW moments (16 bytes per parameter, sharded by FSDP), the
float32 logits of one micro-batch and their gradient, the int64 token ids of one global batch, and the
modules of every layer.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from retnet.training.config import TrainConfig, build_model_config
from retnet.training.errors import TrainError

GIB = 1024**3
LAYER_OVERHEAD = 32 * 1024  # host bytes of a layer's module objects beyond its weights (about 47 KiB measured)


def min_parameters(shape: dict[str, Any]) -> int | None:
    """A lower bound of a RetNet LM's parameter count from its shape fields (``None`` if they are not ints).

    Every layer kind has at least two ``d x d`` projections and the ``d x f`` FFN's three matrices; the
    embedding (tied or not) has ``vocab_size x d``.
    """
    keys = ("vocab_size", "hidden_size", "num_layers", "ffn_dim")
    values = [shape.get(k) for k in keys]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    vocab, d, layers, f = values
    return layers * (2 * d * d + 3 * d * f) + vocab * d


def device_memory(device: torch.device) -> int:
    """Total bytes of memory of ``device`` (the machine's RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(cfg: TrainConfig, vocab_size: int, device: torch.device, world_size: int = 1) -> None:
    """Raise :class:`TrainError` when the run needs more memory than ``device`` has, or its model config is
    invalid. A lower bound of the model's size is checked before its config is built (which takes time in
    the number of layers), then the exact count."""
    from retnet.models.config import PRESETS

    shape = {**PRESETS.get(cfg.model, {}), **cfg.model_overrides, "vocab_size": vocab_size}
    floor = min_parameters(shape)
    if floor is not None:
        _check(cfg, floor, shape, vocab_size, device, world_size)
    config = build_model_config(cfg, vocab_size)
    _check(cfg, config.num_parameters(), {**shape, "num_layers": config.num_layers}, vocab_size, device, world_size)


def _check(
    cfg: TrainConfig, params: int, shape: dict[str, Any], vocab_size: int, device: torch.device, world_size: int
) -> None:
    shards = world_size if cfg.fsdp else 1
    model_bytes = 16 * params // shards
    if device.type == "cpu":  # the layers' module objects share the CPU's memory
        model_bytes += LAYER_OVERHEAD * shape["num_layers"]
    logit_bytes = 2 * 4 * cfg.batch_size * cfg.seq_len * vocab_size
    id_bytes = 8 * cfg.batch_size * cfg.grad_accum * world_size * (cfg.seq_len + 1)
    need, have = model_bytes + logit_bytes + id_bytes, device_memory(device)
    if need > have:
        dims = ", ".join(f"{k} {shape.get(k)}" for k in ("num_layers", "hidden_size", "value_dim", "ffn_dim"))
        raise TrainError(
            f"the run needs at least {need / GIB:,.1f} GiB of memory but {device.type} has {have / GIB:,.1f} GiB: "
            f"the model has >= {params:,} parameters ({dims}, vocab_size {vocab_size}; 16 bytes each with AdamW) "
            f"= {model_bytes / GIB:,.1f} GiB, the logits of batch_size {cfg.batch_size} x seq_len {cfg.seq_len} "
            f"tokens {logit_bytes / GIB:,.1f} GiB, the token ids of grad_accum {cfg.grad_accum} micro-batches "
            f"{id_bytes / GIB:,.1f} GiB"
        )
