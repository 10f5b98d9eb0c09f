"""``RetNetState``: the whole decoding state of a model, one entry per layer plus positions.

Retention layers keep a fixed-size tensor; attention layers (hybrids) a growing :class:`KVCache`; YOCO keeps
its one KV cache, shared by every cross-attention layer, in ``shared``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from retnet.layers.attention import KVCache


@dataclass
class RetNetState:
    """Every layer's state and the number of tokens each row has seen.

    ``layers[i]`` is layer i's state (``[B, H, Dk, Dv]`` float32 for retention layers; other layer kinds may
    keep other tensors). ``offset`` is ``[B]`` long: the rotation position of each row's next token. For
    pure retention stacks the size does not depend on how many tokens were processed; attention layers add a
    :class:`KVCache` each (``None`` entries for YOCO's cross-attention layers, whose one cache is ``shared``).
    """

    layers: list[Any]
    offset: torch.Tensor
    shared: KVCache | None = None

    @property
    def batch_size(self) -> int:
        return int(self.offset.shape[0])

    def nbytes(self) -> int:
        """Bytes held by the state (all layers and the offsets)."""
        return _nbytes(self.layers) + _nbytes(self.shared) + self.offset.numel() * self.offset.element_size()

    def to(self, device: torch.device | str) -> RetNetState:
        fn = lambda t: t.to(device)  # noqa: E731
        return RetNetState(_map(self.layers, fn), self.offset.to(device), _map(self.shared, fn))

    def clone(self) -> RetNetState:
        return RetNetState(_map(self.layers, torch.clone), self.offset.clone(), _map(self.shared, torch.clone))

    def select(self, index: torch.Tensor | list[int]) -> RetNetState:
        """Rows ``index`` of the batch (e.g. to reorder beams or drop finished sequences)."""
        idx = torch.as_tensor(index, device=self.offset.device, dtype=torch.long)
        fn = lambda t: t.index_select(0, idx.to(t.device))  # noqa: E731
        return RetNetState(_map(self.layers, fn), self.offset[idx], _map(self.shared, fn))

    @staticmethod
    def cat(states: list[RetNetState]) -> RetNetState:
        """Stack several states along the batch (KV caches of different lengths are left padded)."""
        layers = [
            _zip_map([s.layers[i] for s in states], lambda ts: torch.cat(ts, 0)) for i in range(len(states[0].layers))
        ]
        shared = _zip_map([s.shared for s in states], lambda ts: torch.cat(ts, 0))
        return RetNetState(layers, torch.cat([s.offset for s in states]), shared)


def _nbytes(x: Any) -> int:
    if isinstance(x, KVCache):
        return x.nbytes()
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    if isinstance(x, dict):
        return sum(_nbytes(t) for t in x.values())
    return 0


def _map(x: Any, fn) -> Any:
    if isinstance(x, KVCache):
        return x.map(fn)
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_map(t, fn) for t in x)
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    return x


def _zip_map(xs: list[Any], fn) -> Any:
    first = xs[0]
    if isinstance(first, KVCache):
        return KVCache.cat_batch(xs)
    if isinstance(first, torch.Tensor):
        return fn(xs)
    if isinstance(first, (list, tuple)):
        return type(first)(_zip_map([x[i] for x in xs], fn) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _zip_map([x[k] for x in xs], fn) for k in first}
    return first
