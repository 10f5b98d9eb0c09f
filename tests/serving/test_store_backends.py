"""The store interface's promises, held by both implementations: SQLite + files and a real Redis server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import torch

from retnet.serving.state_io import state_to_bytes
from retnet.serving.store import ConversationBusy, ConversationNotFound, StoreError, StoreFull, StoreUnavailable
from retnet.serving.store_redis import PREFIX, RedisStore
from retnet.serving.store_sqlite import SQLiteStore
from tests.serving.test_store import Clock, state

BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def opener(request, tmp_path):
    """``open(clock=None, **bounds)``: a store of the parametrized kind; every call opens the same storage
    again (another process's view, for Redis)."""
    opened = []
    where = request.getfixturevalue("redis_url") if request.param == "redis" else tmp_path / "store"

    def open_store(clock=None, **kw):
        args = dict(fingerprint="m1", max_count=100, max_bytes=1 << 30, ttl_s=3600, cache_bytes=0)
        args.update(kw)
        cls = RedisStore if request.param == "redis" else SQLiteStore
        store = cls(where, clock=clock or Clock(), **args)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def test_turns_persist_and_reopen(opener):
    store = opener()
    conv = store.create("chat")
    assert store.load(store.get(conv.id)) is None and store.get(conv.id).state_file is None
    store.acquire(conv.id)  # a turn is stored by the request that holds the conversation
    store.save_turn(conv.id, state(1.0), [5, 6], new_tokens=10)
    store.save_turn(conv.id, state(2.0), [9], new_tokens=4)
    store.release(conv.id)
    other = opener()
    rec = other.get(conv.id)
    assert (rec.kind, rec.turns, rec.tokens, rec.pending) == ("chat", 2, 14, [9])
    loaded = other.load(rec)
    assert torch.equal(loaded.layers[1], state(2.0).layers[1]) and loaded.offset.tolist() == [7]
    assert other.stats()["bytes"] == rec.nbytes > 0 and other.stats()["conversations"] == 1


def test_one_turn_at_a_time_also_across_stores(opener):
    a = opener()
    conv = a.create("chat", acquire=True)
    with pytest.raises(ConversationBusy):
        a.acquire(conv.id)
    with pytest.raises(ConversationBusy):
        a.delete(conv.id)
    a.release(conv.id)
    a.acquire(conv.id)
    a.release(conv.id)
    a.delete(conv.id)
    with pytest.raises(ConversationNotFound, match="deleted"):
        a.get(conv.id)


def test_create_and_lock_is_one_step_and_the_count_bound_holds(opener):
    store = opener(max_count=1)
    first = store.create("chat", acquire=True)
    with pytest.raises(StoreFull):
        store.create("chat", acquire=True)
    assert store.stats()["conversations"] == 1 and store.get(first.id).id == first.id
    store.release(first.id)
    second = store.create("chat", acquire=True)
    with pytest.raises(ConversationNotFound, match="lru"):
        store.get(first.id)
    store.release(second.id)

    def race(_):
        try:
            return store.create("completion", acquire=True).id
        except StoreFull:
            return None

    with ThreadPoolExecutor(8) as pool:
        got = [c for c in pool.map(race, range(16)) if c is not None]
    assert len(got) == 1 and store.stats()["conversations"] == 1 and store.stats()["active_turns"] == 1


def test_lru_by_count_and_bytes_never_evicts_a_turn_in_progress(opener):
    clock = Clock()
    store = opener(clock, max_count=3)
    ids = []
    for i in range(4):
        clock.t += 1
        c = store.create("chat", acquire=True)
        store.save_turn(c.id, state(float(i)), [1], new_tokens=1)
        if i > 0:
            store.release(c.id)
        ids.append(c.id)
    store.get(ids[0])  # mid-turn: kept although least recently used
    with pytest.raises(ConversationNotFound, match="lru"):
        store.get(ids[1])
    assert store.stats()["evicted"]["lru"] == 1 and store.stats()["conversations"] == 3


def test_lru_by_bytes(opener):
    one = len(state_to_bytes(state(0.0), {"conversation": "conv_" + "0" * 24, "pending": "[1]"}))
    clock = Clock()
    store = opener(clock, max_bytes=2 * one + 100)
    kept = []
    for i in range(3):
        clock.t += 1
        c = store.create("chat", acquire=True)
        store.save_turn(c.id, state(float(i)), [1], new_tokens=1)
        store.release(c.id)
        kept.append(c.id)
        if i == 1:
            clock.t += 1
            store.acquire(kept[0])
            store.save_turn(kept[0], state(9.0), [1], new_tokens=1)  # touch the first: now the second is LRU
            store.release(kept[0])
    stats = store.stats()
    assert stats["conversations"] == 2 and stats["bytes"] <= 2 * one + 100 and stats["evicted"]["lru"] == 1
    with pytest.raises(ConversationNotFound, match="lru"):
        store.get(kept[1])
    store.get(kept[0])


def test_ttl_expiry_and_unknown_ids_are_not_found(opener):
    clock = Clock()
    store = opener(clock, ttl_s=10)
    conv = store.create("chat")
    busy = store.create("chat", acquire=True)
    clock.t += 11
    with pytest.raises(ConversationNotFound, match="expired"):
        store.get(conv.id)
    assert store.get(busy.id).id == busy.id  # mid-turn: not expired
    with pytest.raises(ConversationNotFound, match="unknown"):
        store.get("conv_" + "f" * 24)


def test_listing_pages_through_live_conversations(opener):
    clock = Clock()
    store = opener(clock, ttl_s=100)
    ids = []
    for _ in range(5):
        clock.t += 1
        ids.append(store.create("chat").id)
    page, more = store.list(2)
    assert [c.id for c in page] == ids[::-1][:2] and more
    page2, more2 = store.list(2, after=page[-1].id)
    page3, more3 = store.list(2, after=page2[-1].id)
    assert [c.id for c in page + page2 + page3] == ids[::-1] and more2 and not more3
    assert [c.id for c in store.list(10, order="asc")[0]] == ids
    clock.t += 99.5
    assert [c.id for c in store.list(10)[0]] == ids[4:]
    with pytest.raises(ConversationNotFound):
        store.list(2, after="conv_" + "0" * 24)


def test_states_of_another_model_are_refused(opener):
    opener()
    with pytest.raises(StoreError, match="different model"):
        opener(fingerprint="m2")


def test_cached_states_are_copies(opener):
    store = opener(cache_bytes=1 << 20)
    conv = store.create("chat", acquire=True)
    store.save_turn(conv.id, state(3.0), [1], new_tokens=1)
    a = store.load(store.get(conv.id))
    a.layers[0].zero_()
    assert float(store.load(store.get(conv.id)).layers[0].sum()) == 3.0 * 48


# ---------------------------------------------------------------------------------------------- Redis only
def test_redis_keeps_states_as_safetensors_in_the_record(redis_url):
    store = RedisStore(redis_url, fingerprint="m1", max_count=10, max_bytes=1 << 30, ttl_s=3600)
    conv = store.create("chat", acquire=True)
    store.save_turn(conv.id, state(1.5), [4], new_tokens=3)
    raw = redis.Redis.from_url(redis_url).hget(PREFIX + "conv:" + conv.id, "state")
    header = raw[8 : 8 + int.from_bytes(raw[:8], "little")]
    assert b'"format":"retnet-state"' in header and not raw.startswith(b"\x80")  # safetensors, not a pickle
    redis.Redis.from_url(redis_url).hset(PREFIX + "conv:" + conv.id, "state", b"garbage" * 3)
    with pytest.raises(Exception, match="damaged or not a retnet state"):
        store.load(store.get(conv.id))
    store.close()


def test_redis_lock_of_a_dead_process_expires_and_a_lost_lock_stores_nothing(redis_url):
    args = dict(fingerprint="m1", max_count=10, max_bytes=1 << 30, ttl_s=3600, lock_ttl_s=0.6)
    dead = RedisStore(redis_url, **args)
    alive = RedisStore(redis_url, **args)
    conv = dead.create("chat", acquire=True)
    dead.save_turn(conv.id, state(1.0), [2], new_tokens=5)
    time.sleep(1.0)  # renewed in the background while the turn goes on
    with pytest.raises(ConversationBusy):
        alive.acquire(conv.id)
    dead.stopping.set()  # the process "dies": no renewal, no release
    dead.renewer.join()
    time.sleep(0.8)
    rec = alive.acquire(conv.id)
    assert (rec.turns, rec.pending) == (1, [2])
    assert torch.equal(alive.load(rec).layers[0], state(1.0).layers[0])
    with pytest.raises(StoreUnavailable, match="lock .* expired"):
        dead.save_turn(conv.id, state(9.0), [3], new_tokens=1)  # it no longer holds the lock
    assert alive.get(conv.id).turns == 1
    alive.save_turn(conv.id, state(2.0), [3], new_tokens=1)
    assert alive.get(conv.id).turns == 2
    alive.close()


def test_redis_unreachable_is_a_clear_error(redis_server, tmp_path):
    from tests.serving.helpers import free_port

    with pytest.raises(StoreError, match="cannot use the Redis store at redis://127.0.0.1"):
        RedisStore(f"redis://127.0.0.1:{free_port()}/0", fingerprint="m", max_count=1, max_bytes=1, ttl_s=1)
    from tests.serving.redis_server import RedisServer

    own = RedisServer(tmp_path).start()
    store = RedisStore(own.url(), fingerprint="m", max_count=5, max_bytes=1 << 20, ttl_s=60)
    conv = store.create("chat")
    own.stop()
    with pytest.raises(StoreUnavailable, match="the Redis store at redis://127.0.0.1"):
        store.get(conv.id)
    store.stopping.set()


def test_store_option_is_checked(tmp_path):
    from retnet.serving.config import ServerConfig

    with pytest.raises(ValueError, match="store must be 'sqlite' or a Redis URL"):
        ServerConfig(tmp_path, store="mysql://localhost/db")
    with pytest.raises(ValueError, match="redis_lock_ttl_s"):
        ServerConfig(tmp_path, store="redis://localhost:6379/0", redis_lock_ttl_s=0)
    with pytest.raises(ValueError, match="prefix_every"):
        ServerConfig(tmp_path, prefix_every=-1)
