"""Prefix states: the state after an exact token prefix, shared by every request that starts with those tokens.

A request without a stored conversation state looks up the longest cached prefix of its prompt and prefills
only the rest. While it prefills, the engine hands out the states at chosen positions (``snapshot_at``): the
chat template's message boundaries before the last message (so a shared system prompt or few-shot examples
hit, however short), every ``every`` tokens (so a shared long document hits too) and the prompt's end (which
is a prefix of a stateless client's next turn). Each position but the end splits a prefill chunk, an extra
forward pass, so every-``every`` positions in the prompt's last ``every`` tokens are left out: the end is kept
there instead, for free, and a later request loses at most ``every`` tokens of the saving. An entry is keyed
by the prefix's length and the SHA-256 of its token ids, so only an identical prefix hits; entries are bounded
by bytes, least recently used first. A hit leaves at least one prompt token to compute logits from.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Callable, Sequence

import torch

from retnet.models import RetNetState
from retnet.serving.state_lru import StateLRU


def _token_bytes(ids: Sequence[int]) -> bytes:
    return array("q", ids).tobytes()


def prefix_key(ids: Sequence[int]) -> tuple[int, str]:
    """The cache key of a token prefix: its length and the SHA-256 of its ids (as little-endian int64)."""
    return len(ids), hashlib.sha256(_token_bytes(ids)).hexdigest()


def text_boundaries(encode: Callable[[str], list[int]], prefixes: list[str], ids: list[int]) -> list[int]:
    """Positions in ``ids`` where a text prefix (e.g. the conversation up to the end of message k) ends: the
    length of its tokens, kept only where they are exactly the first tokens of ``ids`` (a tokenizer may merge
    across the boundary, and then there is no such position)."""
    out = []
    for text in prefixes:
        head = encode(text)
        if 0 < len(head) <= len(ids) and ids[: len(head)] == head:
            out.append(len(head))
    return out


class PrefixCache:
    def __init__(self, max_bytes: int, every: int) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.every = every
        self.lru: StateLRU[tuple[int, str]] = StateLRU(max_bytes)
        self.counts = {"hits": 0, "misses": 0, "tokens_saved": 0, "stored": 0}
        self.lock = threading.Lock()

    def lookup(self, prompt: list[int]) -> tuple[int, RetNetState | None]:
        """The longest cached prefix shorter than ``prompt``: (its length, a copy of its state), or (0, None)."""
        with self.lru.lock:
            lengths = sorted({n for n, _ in self.lru.entries if n < len(prompt)})
        best: tuple[int, RetNetState | None] = (0, None)
        if lengths:
            h, done = hashlib.sha256(), 0
            for n in lengths:  # one pass over the prompt, a digest at each candidate length
                h.update(_token_bytes(prompt[done:n]))
                done = n
                hit = self.lru.get((n, h.copy().hexdigest()))
                if hit is not None:
                    best = (n, hit[0])
        with self.lock:
            if best[1] is None:
                self.counts["misses"] += 1
            else:
                self.counts["hits"] += 1
                self.counts["tokens_saved"] += best[0]
        return best

    def positions(self, prompt: list[int], boundaries: list[int], start: int) -> list[int]:
        """Where to capture states for ``prompt`` (prefilled from ``start``) that are not cached yet: the
        boundaries, every ``every`` tokens up to ``every`` tokens before the end, and the end."""
        if self.lru.max_bytes == 0:
            return []
        wanted = set(boundaries) | {len(prompt)}
        if self.every:
            wanted.update(range(self.every, len(prompt) - self.every + 1, self.every))
        wanted = sorted(p for p in wanted if start < p <= len(prompt))
        if not wanted:
            return []
        out, h, done = [], hashlib.sha256(), 0
        for n in wanted:
            h.update(_token_bytes(prompt[done:n]))
            done = n
            if (n, h.copy().hexdigest()) not in self.lru:
                out.append(n)
        return out

    def put(self, prefix: list[int], state: RetNetState, last_logits: torch.Tensor) -> None:
        """Keep ``state`` (a copy nobody else holds) and its last logits for the prefix ``prefix``."""
        size = state.nbytes() + last_logits.numel() * last_logits.element_size()
        if self.lru.put(prefix_key(prefix), state, last_logits, nbytes=size, clone=False):
            with self.lock:
                self.counts["stored"] += 1

    def stats(self) -> dict:
        with self.lock:
            counts = dict(self.counts)
        return {
            **counts,
            "entries": len(self.lru),
            "bytes": self.lru.nbytes,
            "max_bytes": self.lru.max_bytes,
            "evicted": self.lru.evictions,
            "every": self.every,
        }
