"""Distributed set-up for ``torchrun``: process group from the environment, DDP or FSDP2 wrapping, reductions.

The same training command runs alone or under ``torchrun --nproc-per-node N [--nnodes M ...]``: the
launcher's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables select the distributed path. NCCL is used on
CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from retnet.training.config import DEVICES


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


class DeviceError(ValueError):
    """A device name that is not one of :data:`DEVICES`, or ``cuda`` where torch sees no CUDA device."""


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The one place device names are resolved. ``auto``: this process's CUDA device when there is one,
    else the CPU."""
    if name not in DEVICES:
        raise DeviceError(f"must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("cuda: CUDA is not available (torch sees no CUDA device)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto") -> DistInfo:
    """Join the process group described by the launcher's environment (a no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, *, fsdp: bool) -> nn.Module:
    """DistributedDataParallel, or FSDP2 (``fully_shard`` per layer, then the root) with ``fsdp``."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        inner = getattr(model, "model", model)
        for layer in getattr(inner, "layers", []):
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return getattr(model, "module", model)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few floats over all ranks (float64, so sums of losses stay exact enough)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (for small metadata such as an error message)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
