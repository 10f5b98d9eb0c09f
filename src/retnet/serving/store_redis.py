"""The shared conversation store: records and states in one Redis database, for any number of server processes.

Layout under the prefix ``retnet:``: ``conv:<id>`` is a hash holding the record (kind, times, counts,
pending tokens, the state's version) and the state itself as safetensors bytes (never pickle), so a record and
its state change together; ``used`` and ``created`` are sorted sets (last use, creation) for eviction and
listing; ``bytes`` is the total state size; ``tomb:<id>`` says why a conversation is gone (expires after
``TOMBSTONE_S``); ``evicted`` counts evictions; ``fingerprint`` names the model the states belong to.

Every change that touches more than one key is one Lua script, which Redis runs atomically. A turn holds the
lock ``lock:<id>`` (``SET NX PX`` with a random token; released and renewed only by a script that compares the
token), renewed in the background while the turn runs, so a process that dies mid-turn frees its
conversations after ``lock_ttl_s`` and never leaves a half-written turn: the last stored turn stays intact.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlsplit

import redis

from retnet.models import RetNetState
from retnet.serving.state_io import state_from_bytes, state_to_bytes
from retnet.serving.state_lru import StateLRU
from retnet.serving.store import (
    Conversation,
    ConversationBusy,
    ConversationNotFound,
    StoreError,
    StoreFull,
    StoreUnavailable,
    new_conversation_id,
    store_stats,
)

log = logging.getLogger("retnet.serving")
PREFIX = "retnet:"
TOMBSTONE_S = 30 * 24 * 3600
FIELDS = ("kind", "created", "last_used", "turns", "tokens", "version", "nbytes", "pending")
LIST_BATCH = 256

# KEYS: conv, used, created, lock. ARGV: id, kind, now, max_count, lock token ('' for none), lock ms.
CREATE = """
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'kind', ARGV[2], 'created', ARGV[3], 'last_used', ARGV[3], 'turns', 0, 'tokens', 0,
           'version', '', 'nbytes', 0, 'pending', '[]')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[6]) end
return 1
"""
# KEYS: conv, used, lock, bytes. ARGV: id, token, nbytes, pending, new tokens, now, state bytes.
# Returns the new turn count, -1 if the conversation is gone, -2 if this process no longer holds its lock.
SAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return -2 end
local old = tonumber(redis.call('HGET', KEYS[1], 'nbytes'))
local turns = redis.call('HINCRBY', KEYS[1], 'turns', 1)
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[5])
redis.call('HSET', KEYS[1], 'state', ARGV[7], 'version', ARGV[1] .. '.' .. turns, 'nbytes', ARGV[3],
           'pending', ARGV[4], 'last_used', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('INCRBY', KEYS[4], tonumber(ARGV[3]) - old)
return turns
"""
# KEYS: conv, used, created, lock, bytes, tomb, evicted. ARGV: id, reason, tombstone s, latest last_used ('' any).
# Returns the freed bytes + 1, 0 if it was used after ARGV[4], -1 if gone, -2 if mid-turn.
DELETE = """
if redis.call('EXISTS', KEYS[4]) == 1 then return -2 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[4] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'last_used')) > tonumber(ARGV[4]) then return 0 end
local n = tonumber(redis.call('HGET', KEYS[1], 'nbytes'))
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DECRBY', KEYS[5], n)
redis.call('SET', KEYS[6], ARGV[2], 'EX', ARGV[3])
if ARGV[2] ~= 'deleted' then redis.call('HINCRBY', KEYS[7], ARGV[2], 1) end
return n + 1
"""
# KEYS: lock. ARGV: token. Delete the lock only if it is still ours.
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# KEYS: lock. ARGV: token, ms. Extend the lock only if it is still ours.
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def _unavailable(method: Callable) -> Callable:
    """Redis errors (connection lost, timeouts) leave the store as :class:`StoreUnavailable`."""

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the Redis store at {self.where} failed: {type(exc).__name__}: {exc}") from exc

    return wrapper


def redacted(url: str) -> str:
    """The URL without its password, for messages and /health."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


class RedisStore:
    """:class:`retnet.serving.store.ConversationStore` in a Redis database shared by several server processes."""

    def __init__(
        self,
        url: str,
        *,
        fingerprint: str,
        max_count: int,
        max_bytes: int,
        ttl_s: float,
        cache_bytes: int = 0,
        lock_ttl_s: float = 30.0,
        clock=time.time,
    ) -> None:
        self.where = redacted(url)
        self.max_count, self.max_bytes, self.ttl_s, self.clock = max_count, max_bytes, ttl_s, clock
        self.lock_ms = max(1, int(lock_ttl_s * 1000))
        try:
            self.r = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
            self.r.ping()
            self.r.set(PREFIX + "fingerprint", fingerprint, nx=True)
            stored = self.r.get(PREFIX + "fingerprint")
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"cannot use the Redis store at {self.where} (--store): {exc}") from exc
        if stored != fingerprint.encode():
            self.r.close()
            raise StoreError(
                f"the Redis database at {self.where} holds conversation states of a different model; "
                "use another database (the /N at the end of the --store URL) or empty it"
            )
        sources = {"create": CREATE, "save": SAVE, "delete": DELETE, "release": RELEASE, "renew": RENEW}
        self.scripts = {name: self.r.register_script(src) for name, src in sources.items()}
        self.held: dict[str, str] = {}  # conversation id -> our lock token
        self.held_lock = threading.Lock()
        self.cache: StateLRU[str] = StateLRU(cache_bytes)  # id -> (state, version)
        self.stopping = threading.Event()
        self.renewer = threading.Thread(target=self._renew_locks, name="retnet-redis-locks", daemon=True)
        self.renewer.start()

    # ---------------------------------------------------------------- keys
    @staticmethod
    def _conv(conv_id: str) -> str:
        return f"{PREFIX}conv:{conv_id}"

    @staticmethod
    def _lock(conv_id: str) -> str:
        return f"{PREFIX}lock:{conv_id}"

    def _delete_keys(self, conv_id: str) -> list[str]:
        p = PREFIX
        return [self._conv(conv_id), p + "used", p + "created", self._lock(conv_id), p + "bytes"] + [
            f"{p}tomb:{conv_id}",
            p + "evicted",
        ]

    # ---------------------------------------------------------------- records
    def _record(self, conv_id: str) -> Conversation | None:
        values = self.r.hmget(self._conv(conv_id), FIELDS)
        if values[0] is None:
            return None
        kind, created, used, turns, tokens, version, nbytes, pending = (v.decode() for v in values)
        return Conversation(
            conv_id,
            kind,
            float(created),
            float(used),
            int(turns),
            int(tokens),
            version or None,
            int(nbytes),
            json.loads(pending),
        )

    @_unavailable
    def create(self, kind: str, *, acquire: bool = False) -> Conversation:
        self._enforce_bounds(room=1)
        conv_id, now = new_conversation_id(), self.clock()
        token = secrets.token_hex(16) if acquire else ""
        keys = [self._conv(conv_id), PREFIX + "used", PREFIX + "created", self._lock(conv_id)]
        if not self.scripts["create"](keys=keys, args=[conv_id, kind, repr(now), self.max_count, token, self.lock_ms]):
            raise StoreFull(self.max_count)
        if acquire:
            with self.held_lock:
                self.held[conv_id] = token
        return self._record(conv_id)

    @_unavailable
    def get(self, conv_id: str) -> Conversation:
        conv = self._record(conv_id)
        if conv is None:
            reason = self.r.get(f"{PREFIX}tomb:{conv_id}")
            raise ConversationNotFound(conv_id, reason.decode() if reason else "unknown")
        if self.clock() - conv.last_used > self.ttl_s and not self.r.exists(self._lock(conv_id)):
            self._remove(conv_id, "expired", latest=repr(self.clock() - self.ttl_s))
            raise ConversationNotFound(conv_id, "expired")
        return conv

    @_unavailable
    def delete(self, conv_id: str) -> None:
        self.get(conv_id)
        result = self._remove(conv_id, "deleted")
        if result == -2:
            raise ConversationBusy(conv_id)
        if result == -1:
            raise ConversationNotFound(conv_id, "deleted")

    def _remove(self, conv_id: str, reason: str, latest: str = "") -> int:
        self.cache.drop(conv_id)
        return int(self.scripts["delete"](keys=self._delete_keys(conv_id), args=[conv_id, reason, TOMBSTONE_S, latest]))

    @_unavailable
    def list(
        self, limit: int = 100, *, after: str | None = None, order: str = "desc"
    ) -> tuple[list[Conversation], bool]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        desc, key = order == "desc", PREFIX + "created"
        start = 0
        if after is not None:
            rank = self.r.zrevrank(key, after) if desc else self.r.zrank(key, after)
            if rank is None:
                raise ConversationNotFound(after)
            start = rank + 1
        cutoff = self.clock() - self.ttl_s
        page: list[Conversation] = []
        while len(page) <= limit:
            ids = self.r.zrange(key, start, start + LIST_BATCH - 1, desc=desc)
            if not ids:
                break
            start += len(ids)
            for raw in ids:
                conv = self._record(raw.decode())
                if conv is not None and conv.last_used >= cutoff:
                    page.append(conv)
        return page[:limit], len(page) > limit

    # ---------------------------------------------------------------- turns
    @_unavailable
    def acquire(self, conv_id: str) -> Conversation:
        self.get(conv_id)
        token = secrets.token_hex(16)
        if not self.r.set(self._lock(conv_id), token, nx=True, px=self.lock_ms):
            raise ConversationBusy(conv_id)
        with self.held_lock:
            self.held[conv_id] = token
        conv = self._record(conv_id)  # deleted between the check and the lock?
        if conv is None:
            self.release(conv_id)
            raise ConversationNotFound(conv_id, "deleted")
        return conv

    def release(self, conv_id: str) -> None:
        """Unlock (never raises: if Redis cannot be reached, the lock expires after ``lock_ttl_s`` by itself)."""
        with self.held_lock:
            token = self.held.pop(conv_id, None)
        if token is not None:
            try:
                self.scripts["release"](keys=[self._lock(conv_id)], args=[token])
            except redis.RedisError as exc:
                log.warning(
                    "could not release the lock on %s in %s (it expires by itself): %s", conv_id, self.where, exc
                )

    def _renew_locks(self) -> None:
        """Extend the locks of turns in progress every third of their lifetime (a dead process's expire)."""
        while not self.stopping.wait(self.lock_ms / 3000):
            with self.held_lock:
                held = list(self.held.items())
            for conv_id, token in held:
                try:
                    self.scripts["renew"](keys=[self._lock(conv_id)], args=[token, self.lock_ms])
                except redis.RedisError:
                    pass  # the next round retries; a lock that expired meanwhile makes save_turn refuse

    @_unavailable
    def load(self, conv: Conversation) -> RetNetState | None:
        if conv.state_file is None:
            return None
        hit = self.cache.get(conv.id)
        if hit is not None and hit[1] == conv.state_file:
            return hit[0]
        version, data = self.r.hmget(self._conv(conv.id), ["version", "state"])
        if data is None:
            raise ConversationNotFound(conv.id, "deleted")
        state, _ = state_from_bytes(data, f"the state of {conv.id} in the Redis store at {self.where}")
        self.cache.put(conv.id, state, version.decode())
        return state

    @_unavailable
    def save_turn(self, conv_id: str, state: RetNetState, pending: list[int], new_tokens: int) -> Conversation:
        with self.held_lock:
            token = self.held.get(conv_id, "")
        data = state_to_bytes(state, {"conversation": conv_id, "pending": json.dumps(pending)})
        keys = [self._conv(conv_id), PREFIX + "used", self._lock(conv_id), PREFIX + "bytes"]
        args = [conv_id, token, len(data), json.dumps(pending), new_tokens, repr(self.clock()), data]
        turns = int(self.scripts["save"](keys=keys, args=args))
        if turns == -1:
            raise ConversationNotFound(conv_id, "deleted during the turn")
        if turns == -2:
            raise StoreUnavailable(
                f"the lock on conversation {conv_id!r} expired during the turn (this process stalled for longer "
                f"than the lock's {self.lock_ms / 1000:g} s); the turn was not stored"
            )
        self.cache.put(conv_id, state, f"{conv_id}.{turns}")
        self._enforce_bounds(keep=conv_id)
        return self._record(conv_id)

    # ---------------------------------------------------------------- bounds
    def _enforce_bounds(self, keep: str | None = None, room: int = 0) -> None:
        """Drop expired conversations, then the least recently used until count (plus ``room``) and bytes fit.
        A conversation that is locked, or used again since we looked, is skipped (the script checks both)."""
        cutoff = repr(self.clock() - self.ttl_s)
        for raw in self.r.zrangebyscore(PREFIX + "used", "-inf", cutoff):
            if raw.decode() != keep:
                self._remove(raw.decode(), "expired", latest=cutoff)
        count, total = self._totals()
        limit, skipped = self.max_count - room, 0  # the first ``skipped`` by last use are locked or kept
        while count > limit or total > self.max_bytes:
            batch = self.r.zrange(PREFIX + "used", skipped, skipped + LIST_BATCH - 1, withscores=True)
            if not batch:
                break
            for raw, score in batch:
                if count <= limit and total <= self.max_bytes:
                    break
                freed = 0 if raw.decode() == keep else self._remove(raw.decode(), "lru", latest=repr(score))
                if freed > 0:
                    count, total = count - 1, total - (freed - 1)
                else:
                    skipped += 1

    def _totals(self) -> tuple[int, int]:
        count, total = self.r.zcard(PREFIX + "used"), self.r.get(PREFIX + "bytes")
        return int(count), int(total or 0)

    @_unavailable
    def sweep(self) -> None:
        self._enforce_bounds()

    @_unavailable
    def stats(self) -> dict:
        count, total = self._totals()
        evicted = {k.decode(): int(v) for k, v in self.r.hgetall(PREFIX + "evicted").items()}
        return store_stats(
            self, count, total, evicted, len(self.held), backend="redis", url=self.where, lock_ttl_s=self.lock_ms / 1000
        )

    def close(self) -> None:
        self.stopping.set()
        self.renewer.join(timeout=5)
        for conv_id in list(self.held):
            self.release(conv_id)
        self.r.close()
