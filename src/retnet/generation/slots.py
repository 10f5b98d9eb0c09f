"""Decoding state of a running batch in fixed slots: rows ``[0, n)`` of buffers preallocated for ``capacity``.

Fixed-size state (retention layers, offsets) lives in buffers of ``capacity`` rows allocated once, from the
layout of the first state added. Active rows stay compacted as the prefix ``[0, n)``: a row joins by one copy
into row ``n``, and leaves by moving the last row into its slot (one row copy), so nothing is concatenated or
re-selected per step. A step runs on views of rows ``[0, n)`` and :meth:`StateSlots.store` copies the new
state back (nothing is copied when the model updated the views in place).

Growing KV caches (hybrid attention layers, YOCO's shared cache) cannot be preallocated in these buffers; they
are kept as one batch :class:`KVCache` of ``n`` rows, left padded and masked so rows of different lengths sit
together (the model appends a slot per step). A join concatenates the new row's cache to it, a leave moves
the last row into the freed one and then drops the leading slots that no remaining row uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from retnet.layers.attention import KVCache
from retnet.models.state import RetNetState

Tree = Any  # (layers, offset, shared): nested lists/tuples/dicts of tensors, KV caches and None


def _tree(state: RetNetState) -> Tree:
    return (state.layers, state.offset, state.shared)


def _state(tree: Tree) -> RetNetState:
    layers, offset, shared = tree
    return RetNetState(list(layers), offset, shared)


def _zip(a: Tree, b: Tree, on_tensor: Callable, on_kv: Callable) -> Tree:
    """Walk two trees of the same layout, combining leaves (``b`` may be ``a``)."""
    if isinstance(a, KVCache):
        return on_kv(a, b)
    if isinstance(a, torch.Tensor):
        return on_tensor(a, b)
    if isinstance(a, (list, tuple)):
        return type(a)(_zip(x, y, on_tensor, on_kv) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return {k: _zip(a[k], b[k], on_tensor, on_kv) for k in a}
    return a


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    if not _same_memory(dst, src):
        dst.copy_(src)
    return dst


def trim_padding(cache: KVCache) -> KVCache:
    """``cache`` without the leading slots that are padding in every row."""
    if cache.mask is None or cache.mask.shape[0] == 0:
        return cache
    used = cache.mask.any(0)
    first = int(used.int().argmax()) if bool(used.any()) else cache.length
    mask = cache.mask[:, first:]
    keep = None if bool(mask.all()) else mask
    if first == 0 and keep is not None:
        return cache
    return KVCache(cache.k[:, :, first:], cache.v[:, :, first:], keep)


class StateSlots:
    """The states of up to ``capacity`` decoding rows; see the module docstring."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.n = 0
        self._tree: Tree | None = None  # tensor leaves [capacity, ...]; KV leaves [n, ...]

    def view(self) -> RetNetState:
        """Rows ``[0, n)`` (views into the buffers; the KV caches themselves)."""
        return self.rows(0, self.n)

    def rows(self, start: int, stop: int) -> RetNetState:
        """Rows ``[start, stop)`` as views (KV caches sliced)."""
        if self._tree is None or not 0 <= start < stop <= self.n:
            raise IndexError(f"rows [{start}, {stop}) outside the {self.n} active rows")
        return _state(
            _zip(self._tree, self._tree, lambda t, _: t[start:stop], lambda c, _: c.map(lambda t: t[start:stop]))
        )

    def store(self, new: RetNetState) -> None:
        """Make ``new`` (the state of all ``n`` rows after a step) the rows' state."""
        if new.batch_size != self.n:
            raise ValueError(f"a state of {new.batch_size} rows cannot replace {self.n} active rows")
        n = self.n
        self._tree = _zip(self._tree, _tree(new), lambda buf, t: (_copy_into(buf[:n], t), buf)[1], lambda _, c: c)

    def append(self, state: RetNetState) -> int:
        """Add a one-row state as row ``n``; returns its index."""
        if state.batch_size != 1:
            raise ValueError(f"append takes a one-row state, got {state.batch_size} rows")
        if self.n >= self.capacity:
            raise RuntimeError(f"all {self.capacity} state slots are taken")
        if self._tree is None or self.n == 0:
            self._tree = self._allocate(_tree(state))
        i = self.n

        def put(buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            buf[i : i + 1].copy_(t)
            return buf

        def join(batch: KVCache, row: KVCache) -> KVCache:
            return row.map(torch.clone) if i == 0 else KVCache.cat_batch([batch, row])

        self._tree = _zip(self._tree, _tree(state), put, join)
        self.n += 1
        return i

    def remove(self, i: int) -> None:
        """Drop row ``i``; the last row moves into its slot (callers mirror this in their row lists)."""
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} outside the {self.n} active rows")
        last = self.n - 1

        def move(buf: torch.Tensor, _) -> torch.Tensor:
            if i != last:
                buf[i].copy_(buf[last])
            return buf

        def move_kv(cache: KVCache, _) -> KVCache:
            if i != last:
                for t in (cache.k, cache.v, cache.mask):
                    if t is not None:
                        t[i].copy_(t[last])
            return trim_padding(cache.map(lambda t: t[:last]))

        self._tree = _zip(self._tree, self._tree, move, move_kv)
        self.n = last

    def row(self, i: int) -> RetNetState:
        """An owned copy of row ``i``'s state (padding of its KV caches dropped)."""
        st = self.rows(i, i + 1)
        return _state(_zip(_tree(st), _tree(st), lambda t, _: t.clone(), lambda c, _: trim_padding(c.map(torch.clone))))

    def clear(self) -> None:
        """Forget every row (the buffers stay allocated)."""
        self.n = 0

    def _allocate(self, tree: Tree) -> Tree:
        """Buffers of ``capacity`` rows shaped like the one-row ``tree``'s tensors (the old ones where they fit)."""

        def fits(old: Any, t: torch.Tensor) -> bool:
            return (
                isinstance(old, torch.Tensor)
                and old.shape == (self.capacity, *t.shape[1:])
                and (old.dtype, old.device) == (t.dtype, t.device)
            )

        def alloc(t: torch.Tensor, old: Any) -> torch.Tensor:
            return old if fits(old, t) else torch.empty((self.capacity, *t.shape[1:]), dtype=t.dtype, device=t.device)

        try:
            return _zip(tree, self._tree if self._tree is not None else tree, alloc, lambda c, _: c)
        except (KeyError, TypeError, ValueError):  # another layout than before
            return _zip(tree, tree, alloc, lambda c, _: c)
