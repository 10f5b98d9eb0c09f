"""A least-recently-used map of states bounded by their bytes: the store's hot-state cache and the prefix cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from retnet.models import RetNetState

K = TypeVar("K")


class StateLRU(Generic[K]):
    """``key -> (state, extra)``; holds private clones, hands out clones, so callers may change what they get.
    A state larger than the whole budget is not kept. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.entries: OrderedDict[K, tuple[RetNetState, Any, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: K) -> bool:
        return key in self.entries

    def get(self, key: K) -> tuple[RetNetState, Any] | None:
        with self.lock:
            hit = self.entries.get(key)
            if hit is None:
                return None
            self.entries.move_to_end(key)
            state, extra = hit[0], hit[1]
        return state.clone(), extra

    def put(
        self, key: K, state: RetNetState, extra: Any = None, nbytes: int | None = None, *, clone: bool = True
    ) -> bool:
        """Keep a clone (``clone=False``: keep ``state`` itself, a copy nobody else holds; ``nbytes``: the entry's
        size if it holds more than the state); False if it is larger than the whole budget."""
        size = state.nbytes() if nbytes is None else nbytes
        with self.lock:
            self._drop(key)
            if size > self.max_bytes:
                return False
            self.entries[key] = (state.clone() if clone else state, extra, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                self._drop(next(iter(self.entries)))
                self.evictions += 1
            return True

    def drop(self, key: K) -> None:
        with self.lock:
            self._drop(key)

    def _drop(self, key: K) -> None:
        hit = self.entries.pop(key, None)
        if hit is not None:
            self.nbytes -= hit[2]
