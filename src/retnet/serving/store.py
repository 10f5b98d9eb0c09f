"""The conversation store interface: what the server needs from wherever conversation states live.

Two implementations: :class:`retnet.serving.store_sqlite.SQLiteStore` (a SQLite index and one safetensors
file per state under ``--data-dir``; embedded, the default) and :class:`retnet.serving.store_redis.RedisStore`
(a Redis server shared by any number of server processes, so every replica continues every conversation).
Both keep the same promises: a turn's state, pending tokens and counts change in one atomic step; one turn at
a time per conversation (:class:`ConversationBusy` for a second); bounds by count, bytes and idle time with
least recently used first; a conversation mid-turn is never evicted; states are safetensors, never pickle.
:func:`retnet.serving.app.open_store` picks the implementation from ``--store``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Protocol

from retnet.models import RetNetState

CONV_ID = re.compile(r"conv_[0-9a-f]{24}")
MAX_TOMBSTONES = 100_000


class StoreError(RuntimeError):
    """The store cannot be used (a folder that is not ours, a symlink, states of a different model, a Redis
    server that cannot be reached)."""


class StoreUnavailable(OSError):
    """The store failed at run time (e.g. the Redis server went away): the request gets a 503."""


class StoreFull(RuntimeError):
    """Every conversation is mid-turn, so none can be evicted to make room for a new one."""

    def __init__(self, max_count: int) -> None:
        super().__init__(
            f"the conversation store is full ({max_count} conversations, all with a request in progress); "
            "retry when one ends"
        )


class ConversationNotFound(LookupError):
    def __init__(self, conv_id: str, reason: str = "unknown") -> None:
        super().__init__(f"conversation {conv_id!r} not found ({reason})")
        self.conv_id, self.reason = conv_id, reason


class ConversationBusy(RuntimeError):
    def __init__(self, conv_id: str) -> None:
        super().__init__(f"conversation {conv_id!r} has a request in progress; send the next turn after it ends")


def new_conversation_id() -> str:
    return "conv_" + secrets.token_hex(12)


@dataclass
class Conversation:
    id: str
    kind: str  # "chat" or "completion"
    created: float
    last_used: float
    turns: int
    tokens: int  # tokens folded into the state plus pending ones
    state_file: str | None  # the stored state's name (a file for SQLite, a version for Redis); None before turn 1
    nbytes: int
    pending: list[int]

    def public(self) -> dict:
        return {
            "id": self.id,
            "object": "conversation",
            "kind": self.kind,
            "created": int(self.created),
            "last_used": int(self.last_used),
            "turns": self.turns,
            "tokens": self.tokens,
            "state_bytes": self.nbytes,
        }


EVICTION_POLICY = "expire after ttl_s idle, then least recently used until within both bounds"


def store_stats(store, count: int, total: int, evicted: dict[str, int], active_turns: int, **extra) -> dict:
    """The ``stats()`` dict every store returns (for /health and /metrics): counts and bytes, the bounds read
    from ``store`` (``max_count``, ``max_bytes``, ``ttl_s``), evictions by reason, turns in progress, the
    in-process state cache, then the implementation's own fields (``backend`` and what it adds)."""
    return {
        "conversations": count,
        "bytes": total,
        "max_conversations": store.max_count,
        "max_bytes": store.max_bytes,
        "ttl_s": store.ttl_s,
        "eviction_policy": EVICTION_POLICY,
        "evicted": {"lru": evicted.get("lru", 0), "expired": evicted.get("expired", 0)},
        "active_turns": active_turns,
        "cached_states": len(store.cache),
        "cached_bytes": store.cache.nbytes,
        **extra,
    }


class ConversationStore(Protocol):
    """Conversation records and their states. Every method may be called from any thread."""

    def create(self, kind: str, *, acquire: bool = False) -> Conversation:
        """A new conversation, made room for under the bounds first and, with ``acquire``, locked for its first
        turn in the same step. :class:`StoreFull` when every stored conversation is mid-turn."""

    def get(self, conv_id: str) -> Conversation:
        """The record, or :class:`ConversationNotFound` (unknown, expired, evicted or deleted)."""

    def delete(self, conv_id: str) -> None:
        """Delete it; :class:`ConversationBusy` while a turn is in progress."""

    def list(
        self, limit: int = 100, *, after: str | None = None, order: str = "desc"
    ) -> tuple[list[Conversation], bool]:
        """Live conversations by creation time, then id; the page and whether more follow."""

    def acquire(self, conv_id: str) -> Conversation:
        """Lock the conversation for one turn (a second concurrent turn gets :class:`ConversationBusy`)."""

    def release(self, conv_id: str) -> None:
        """Unlock it (only a lock this store holds)."""

    def load(self, conv: Conversation) -> RetNetState | None:
        """The stored state (None for a conversation without turns yet)."""

    def save_turn(self, conv_id: str, state: RetNetState, pending: list[int], new_tokens: int) -> Conversation:
        """Store the state after a turn, atomically with the record. The caller holds the conversation
        (:meth:`acquire`, or :meth:`create` with ``acquire``); a store shared by processes refuses otherwise."""

    def sweep(self) -> None:
        """Apply the bounds (expiry, then least recently used)."""

    def stats(self) -> dict:
        """Counts, bytes, bounds, evictions and the implementation's name (``backend``), for /health and /metrics."""

    def close(self) -> None: ...
