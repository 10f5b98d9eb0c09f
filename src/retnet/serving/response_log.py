"""The records of stored Responses API responses: what each one said, and which stored state holds its end.

A response's state lives in the conversation store (one conversation of kind ``response`` per response, never
changed after its turn), so continuing from any response forks there and reads nothing but that state. The
response log keeps the rest: the public response object, its input items, its parent and the root of its tree
(for the chat page's list of conversations), and where its prompt ended (a ``prompt`` conversation and the last
logits) so that a regenerate needs no forward pass. A record is only as alive as its state (the routes drop a
record whose state was evicted or expired).

Two implementations, chosen with the conversation store (:func:`retnet.serving.app.open_response_log`):
:class:`retnet.serving.response_log_sqlite.SQLiteResponseLog` (one SQLite file under ``--data-dir``) and
:class:`retnet.serving.response_log_redis.RedisResponseLog` (the Redis database of ``--store redis://...``, so
every replica continues and forks every response). Both write a record in one atomic step and keep logits as
safetensors bytes, never pickle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

RESP_ID = re.compile(r"resp_[0-9a-f]{24}")


@dataclass
class Prompt:
    """Where a response's prompt ended: the answer can be sampled again from here without a forward pass."""

    key: str  # a hash of the previous response id and the prompt's token ids
    conv_id: str  # the conversation (kind "prompt") holding the state after the prompt
    tokens: int  # tokens in that state
    logits: bytes  # the last position's logits, a safetensors file's bytes


@dataclass
class ResponseRecord:
    id: str
    conv_id: str  # the conversation (kind "response") holding the state after this response
    previous_id: str | None
    root_id: str  # the first response of this tree: the chat page's "conversation"
    created: float
    body: dict  # the public response object
    input: list[dict]  # the input items of this response only (its messages, instructions excluded)
    prompt: Prompt | None = None


class ResponseLog(Protocol):
    """Response records. Every method may be called from any thread."""

    def add(self, rec: ResponseRecord) -> None:
        """Store a new record (all of it or nothing)."""

    def get(self, resp_id: str) -> ResponseRecord | None: ...

    def delete(self, resp_id: str) -> None:
        """Forget the record (nothing happens for an unknown id)."""

    def prompt(self, key: str) -> Prompt | None:
        """The newest stored prompt with this key (one whose state may since have been evicted)."""

    def prompt_users(self, conv_id: str) -> int:
        """How many records share the prompt state ``conv_id``."""

    def list(
        self, limit: int, *, after: str | None = None, order: str = "desc", root_id: str | None = None,
        roots_only: bool = False,
    ) -> tuple[list[ResponseRecord], bool]:  # fmt: skip
        """Records by creation time (then id), ``order`` "desc" or "asc", after the record ``after``, only those
        of the tree ``root_id`` and/or only roots; returns the page and whether more follow. ``after`` must
        exist (LookupError otherwise)."""

    def close(self) -> None: ...
