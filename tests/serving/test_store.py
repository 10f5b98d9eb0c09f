"""The conversation store: persistence, atomic turns, eviction by count, bytes and age, fingerprints."""

from __future__ import annotations

import pytest
import torch

from retnet.models import RetNetState
from retnet.serving.store import ConversationBusy, ConversationNotFound, ConversationStore, StoreError


def state(fill: float, layers: int = 2) -> RetNetState:
    return RetNetState([torch.full((1, 2, 4, 6), fill) for _ in range(layers)], torch.tensor([7]))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def open_store(root, clock=None, **kw) -> ConversationStore:
    args = dict(fingerprint="m1", max_count=100, max_bytes=1 << 30, ttl_s=3600, cache_bytes=0)
    args.update(kw)
    return ConversationStore(root, clock=clock or Clock(), **args)


def test_turns_persist_across_reopen_and_replace_files(tmp_path):
    store = open_store(tmp_path)
    conv = store.create("chat")
    assert store.load(store.get(conv.id)) is None
    store.save_turn(conv.id, state(1.0), [5, 6], new_tokens=10)
    store.save_turn(conv.id, state(2.0), [9], new_tokens=4)
    store.close()
    store = open_store(tmp_path)
    rec = store.get(conv.id)
    assert (rec.turns, rec.tokens, rec.pending) == (2, 14, [9])
    loaded = store.load(rec)
    assert torch.equal(loaded.layers[1], state(2.0).layers[1]) and loaded.offset.tolist() == [7]
    assert [p.name for p in (tmp_path / "states").iterdir()] == [rec.state_file]


def test_orphan_files_are_removed_at_start(tmp_path):
    store = open_store(tmp_path)
    conv = store.create("chat")
    store.save_turn(conv.id, state(1.0), [1], new_tokens=1)
    (tmp_path / "states" / "crashed-write.safetensors").write_bytes(b"partial")
    store.close()
    open_store(tmp_path)
    assert len(list((tmp_path / "states").iterdir())) == 1


def test_lru_eviction_by_count_and_bytes(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock, max_count=3)
    ids = []
    for i in range(4):
        clock.t += 1
        c = store.create("chat")
        store.save_turn(c.id, state(float(i)), [1], new_tokens=1)
        ids.append(c.id)
    with pytest.raises(ConversationNotFound, match="lru"):
        store.get(ids[0])
    one = store.get(ids[1]).nbytes
    store2 = open_store(tmp_path / "b", clock, max_bytes=2 * one)
    kept = []
    for i in range(3):
        clock.t += 1
        c = store2.create("chat")
        store2.save_turn(c.id, state(float(i)), [1], new_tokens=1)
        kept.append(c.id)
        if i == 1:
            clock.t += 1
            store2.save_turn(kept[0], state(9.0), [1], new_tokens=1)  # touch the first: now the second is LRU
    stats = store2.stats()
    assert stats["conversations"] == 2 and stats["bytes"] <= 2 * one and stats["evicted"]["lru"] == 1
    with pytest.raises(ConversationNotFound):
        store2.get(kept[1])
    store2.get(kept[0])


def test_ttl_expiry_is_a_not_found(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock, ttl_s=10)
    conv = store.create("chat")
    clock.t += 11
    with pytest.raises(ConversationNotFound, match="expired"):
        store.get(conv.id)
    with pytest.raises(ConversationNotFound, match="unknown"):
        store.get("conv_nope")


def test_busy_conversation_rejects_a_second_turn(tmp_path):
    store = open_store(tmp_path)
    conv = store.create("chat")
    store.acquire(conv.id)
    with pytest.raises(ConversationBusy):
        store.acquire(conv.id)
    store.release(conv.id)
    store.acquire(conv.id)


def test_states_of_another_model_are_refused(tmp_path):
    open_store(tmp_path).close()
    with pytest.raises(StoreError, match="different model"):
        open_store(tmp_path, fingerprint="m2")


def test_memory_cache_returns_copies(tmp_path):
    store = open_store(tmp_path, cache_bytes=1 << 20)
    conv = store.create("chat")
    store.save_turn(conv.id, state(3.0), [1], new_tokens=1)
    a = store.load(store.get(conv.id))
    a.layers[0].zero_()
    assert float(store.load(store.get(conv.id)).layers[0].sum()) == 3.0 * 48
