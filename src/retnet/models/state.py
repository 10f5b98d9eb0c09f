"""``RetNetState``: the whole recurrent state of a model, one fixed-size tensor per layer plus positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RetNetState:
    """Every layer's state and the number of tokens each row has seen.

    ``layers[i]`` is layer i's state (``[B, H, Dk, Dv]`` float32 for retention layers; other layer kinds may
    keep other tensors). ``offset`` is ``[B]`` long: the rotation position of each row's next token. The size
    does not depend on how many tokens were processed.
    """

    layers: list[Any]
    offset: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.offset.shape[0])

    def nbytes(self) -> int:
        """Bytes held by the state (all layers and the offsets)."""
        return _nbytes(self.layers) + self.offset.numel() * self.offset.element_size()

    def to(self, device: torch.device | str) -> RetNetState:
        return RetNetState(_map(self.layers, lambda t: t.to(device)), self.offset.to(device))

    def clone(self) -> RetNetState:
        return RetNetState(_map(self.layers, torch.clone), self.offset.clone())

    def select(self, index: torch.Tensor | list[int]) -> RetNetState:
        """Rows ``index`` of the batch (e.g. to reorder beams or drop finished sequences)."""
        idx = torch.as_tensor(index, device=self.offset.device, dtype=torch.long)
        return RetNetState(_map(self.layers, lambda t: t.index_select(0, idx.to(t.device))), self.offset[idx])

    @staticmethod
    def cat(states: list[RetNetState]) -> RetNetState:
        """Stack several states along the batch."""
        layers = [
            _zip_map([s.layers[i] for s in states], lambda ts: torch.cat(ts, 0)) for i in range(len(states[0].layers))
        ]
        return RetNetState(layers, torch.cat([s.offset for s in states]))


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    if isinstance(x, dict):
        return sum(_nbytes(t) for t in x.values())
    return 0


def _map(x: Any, fn) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_map(t, fn) for t in x)
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    return x


def _zip_map(xs: list[Any], fn) -> Any:
    first = xs[0]
    if isinstance(first, torch.Tensor):
        return fn(xs)
    if isinstance(first, (list, tuple)):
        return type(first)(_zip_map([x[i] for x in xs], fn) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _zip_map([x[k] for x in xs], fn) for k in first}
    return first
