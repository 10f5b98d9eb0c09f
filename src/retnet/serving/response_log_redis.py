"""The response log in the Redis database of the conversation store, shared by every replica.

:class:`retnet.serving.response_log.ResponseLog` for ``--store redis://...``. Layout under the store's prefix
``retnet:``: ``resp:<id>`` is a hash holding the record (the response object and input items as JSON, the
prompt's logits as safetensors bytes, never pickle); ``resps`` (every record), ``resp_roots`` (first responses
of their trees) and ``resp_tree:<root id>`` are sorted sets by creation time, whose ties Redis orders by id, as
the SQLite log orders by ``(created, id)``; ``resp_prompt:<key>`` sorts the records with that prompt by creation
time and ``resp_prompt_users:<conv id>`` holds the records sharing a prompt state. Records never change after
they are written, so adding and deleting one are each a single ``MULTI``/``EXEC`` transaction over all its
keys, which Redis applies atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from retnet.serving.response_log import Prompt, ResponseRecord
from retnet.serving.store_redis import PREFIX, _unavailable

FIELDS = ("conv_id", "previous_id", "root_id", "created", "body", "input")
PROMPT_FIELDS = ("prompt_key", "prompt_conv_id", "prompt_tokens", "logits")
ALL, ROOTS = PREFIX + "resps", PREFIX + "resp_roots"
NEWEST_PROMPTS = 8  # records tried for a prompt key (one may be deleted between the lookup and the read)


def _resp(resp_id: str) -> str:
    return f"{PREFIX}resp:{resp_id}"


def _tree(root_id: str) -> str:
    return f"{PREFIX}resp_tree:{root_id}"


def _prompts(key: str) -> str:
    return f"{PREFIX}resp_prompt:{key}"


def _users(conv_id: str) -> str:
    return f"{PREFIX}resp_prompt_users:{conv_id}"


class RedisResponseLog:
    """Response records in the Redis database behind ``client`` (the conversation store's connection; ``where``
    names it in errors, as :class:`retnet.serving.store_redis.RedisStore` does)."""

    def __init__(self, client: redis.Redis, where: str) -> None:
        self.r, self.where = client, where

    @_unavailable
    def add(self, rec: ResponseRecord) -> None:
        fields: dict[str, str | bytes] = {
            "conv_id": rec.conv_id,
            "previous_id": rec.previous_id or "",
            "root_id": rec.root_id,
            "created": repr(rec.created),
            "body": json.dumps(rec.body),
            "input": json.dumps(rec.input),
        }
        p = rec.prompt
        if p is not None:
            fields |= {"prompt_key": p.key, "prompt_conv_id": p.conv_id, "prompt_tokens": str(p.tokens)}
            fields["logits"] = p.logits
        with self.r.pipeline(transaction=True) as tx:
            tx.hset(_resp(rec.id), mapping=fields)
            tx.zadd(ALL, {rec.id: rec.created})
            tx.zadd(_tree(rec.root_id), {rec.id: rec.created})
            if rec.id == rec.root_id:
                tx.zadd(ROOTS, {rec.id: rec.created})
            if p is not None:
                tx.zadd(_prompts(p.key), {rec.id: rec.created})
                tx.sadd(_users(p.conv_id), rec.id)
            tx.execute()

    def _read(self, resp_id: str) -> ResponseRecord | None:
        values = self.r.hmget(_resp(resp_id), FIELDS + PROMPT_FIELDS)
        if values[0] is None:
            return None
        conv_id, previous_id, root_id, created, body, items, key, prompt_conv, tokens, logits = values
        rec = ResponseRecord(
            resp_id, conv_id.decode(), previous_id.decode() or None, root_id.decode(), float(created),
            json.loads(body), json.loads(items),
        )  # fmt: skip
        if key is not None:
            rec.prompt = Prompt(key.decode(), prompt_conv.decode(), int(tokens), bytes(logits))
        return rec

    @_unavailable
    def get(self, resp_id: str) -> ResponseRecord | None:
        return self._read(resp_id)

    @_unavailable
    def delete(self, resp_id: str) -> None:
        rec = self._read(resp_id)
        if rec is None:
            return
        with self.r.pipeline(transaction=True) as tx:
            tx.delete(_resp(rec.id))
            tx.zrem(ALL, rec.id)
            tx.zrem(ROOTS, rec.id)
            tx.zrem(_tree(rec.root_id), rec.id)
            if rec.prompt is not None:
                tx.zrem(_prompts(rec.prompt.key), rec.id)
                tx.srem(_users(rec.prompt.conv_id), rec.id)
            tx.execute()

    @_unavailable
    def prompt(self, key: str) -> Prompt | None:
        for raw in self.r.zrange(_prompts(key), 0, NEWEST_PROMPTS - 1, desc=True):
            rec = self._read(raw.decode())
            if rec is not None and rec.prompt is not None:
                return rec.prompt
        return None

    @_unavailable
    def prompt_users(self, conv_id: str) -> int:
        return int(self.r.scard(_users(conv_id)))

    @_unavailable
    def list(
        self, limit: int, *, after: str | None = None, order: str = "desc", root_id: str | None = None,
        roots_only: bool = False,
    ) -> tuple[list[ResponseRecord], bool]:  # fmt: skip
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        key = _tree(root_id) if root_id is not None else ROOTS if roots_only else ALL
        keep: Callable[[str], bool] | None = (lambda i: i == root_id) if root_id is not None and roots_only else None
        ids = self._ids(key, limit + 1, after, order == "desc", keep)
        records = [rec for rec in map(self._read, ids) if rec is not None]
        return records[:limit], len(records) > limit

    def _ids(self, key: str, count: int, after: str | None, desc: bool, keep: Callable[[str], bool] | None) -> list:
        """Up to ``count`` ids of the sorted set ``key`` in (created, id) order after the record ``after``."""
        num = None if keep is not None else count
        if after is None:
            ids = [i.decode() for i in self.r.zrange(key, 0, -1 if num is None else num - 1, desc=desc)]
        else:
            created = self.r.hget(_resp(after), "created")
            if created is None:
                raise LookupError(after)
            c = created.decode()
            ties = sorted(i.decode() for i in self.r.zrangebyscore(key, c, c))
            ties = [i for i in ties[::-1] if i < after] if desc else [i for i in ties if i > after]
            page = {"start": 0, "num": num} if num is not None else {}
            if desc:
                rest = self.r.zrevrangebyscore(key, f"({c}", "-inf", **page)
            else:
                rest = self.r.zrangebyscore(key, f"({c}", "+inf", **page)
            ids = ties + [i.decode() for i in rest]
        if keep is not None:
            ids = [i for i in ids if keep(i)]
        return ids[:count]

    def close(self) -> None:
        """Nothing to do: the connection is the conversation store's, which closes it."""
