"""The conversation store: persistence, atomic turns, eviction by count, bytes and age, fingerprints."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from retnet.models import RetNetState
from retnet.serving.store import ConversationBusy, ConversationNotFound, StoreError, StoreFull
from retnet.serving.store_sqlite import MARKER, SQLiteStore
from tests.cli.helpers import snapshot


def state(fill: float, layers: int = 2) -> RetNetState:
    return RetNetState([torch.full((1, 2, 4, 6), fill) for _ in range(layers)], torch.tensor([7]))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def open_store(root, clock=None, **kw) -> SQLiteStore:
    args = dict(fingerprint="m1", max_count=100, max_bytes=1 << 30, ttl_s=3600, cache_bytes=0)
    args.update(kw)
    return SQLiteStore(root, clock=clock or Clock(), **args)


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


def test_only_our_own_orphans_are_removed_at_start(tmp_path):
    store = open_store(tmp_path)
    conv = store.create("chat")
    rec = store.save_turn(conv.id, state(1.0), [1], new_tokens=1)
    states = tmp_path / "states"
    orphan = "conv_" + "a" * 24 + ".3.safetensors"  # a state file whose index row never committed
    partial = ".conv_" + "b" * 24 + ".1.safetensors.k2x_9q.tmp"  # a write killed before its rename
    (states / orphan).write_bytes(b"old")
    (states / partial).write_bytes(b"partial")
    theirs = ["notes.txt", "crashed-write.safetensors", "conv_1.safetensors", ".hidden.tmp"]
    for name in theirs:
        (states / name).write_text("not ours")
    (tmp_path / "elsewhere.txt").write_text("keep")
    (states / ("conv_" + "c" * 24 + ".1.safetensors")).symlink_to(tmp_path / "elsewhere.txt")
    store.close()
    open_store(tmp_path)
    left = sorted(p.name for p in states.iterdir())
    assert orphan not in left and partial not in left
    assert set(theirs) | {rec.state_file, "conv_" + "c" * 24 + ".1.safetensors"} == set(left)
    assert (tmp_path / "elsewhere.txt").read_text() == "keep"


def test_a_folder_that_is_not_a_store_is_refused_untouched(tmp_path):
    """Issue #20.1: --data-dir pointing at a user's folder deleted every file in its states/."""
    user = tmp_path / "mine"
    (user / "states").mkdir(parents=True)
    (user / "states" / "thesis.tex").write_text("years of work")
    (user / "photo.jpg").write_bytes(b"\xff\xd8")
    before = snapshot(user)
    with pytest.raises(StoreError, match="not a retnet conversation store"):
        open_store(user)
    assert snapshot(user) == before


def test_symlinks_where_the_store_keeps_its_files_are_refused(tmp_path):
    """Issue #20.1 and #20.3: a symlinked states/ was followed (and emptied); a symlinked index.sqlite got our
    tables added to someone else's database."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.safetensors").write_text("theirs")
    foreign_db = tmp_path / "app.db"
    db = sqlite3.connect(foreign_db)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    db_bytes = foreign_db.read_bytes()
    for name, target in (("states", other), ("index.sqlite", foreign_db)):
        root = tmp_path / f"store-{name}"
        root.mkdir()
        (root / name).symlink_to(target)
        with pytest.raises(StoreError, match="symbolic link"):
            open_store(root)
        assert sorted(p.name for p in root.iterdir()) == [name]  # no marker, no index written there
    assert (other / "keep.safetensors").read_text() == "theirs" and foreign_db.read_bytes() == db_bytes
    marked = tmp_path / "marked"
    open_store(marked).close()
    (marked / "states").rename(marked / "states-old")
    (marked / "states").symlink_to(other)
    with pytest.raises(StoreError, match="symbolic link"):
        open_store(marked)


def test_a_store_from_before_the_marker_is_adopted(tmp_path):
    store = open_store(tmp_path)
    conv = store.create("chat")
    store.save_turn(conv.id, state(1.0), [1], new_tokens=1)
    store.close()
    (tmp_path / MARKER).unlink()
    reopened = open_store(tmp_path)
    assert reopened.get(conv.id).turns == 1 and (tmp_path / MARKER).is_file()


def test_create_and_lock_is_one_step_and_the_count_bound_holds(tmp_path):
    """Issue #20.4: with max_count 1, a second stored conversation evicted the first between its creation and
    its lock (ConversationNotFound, HTTP 500), and the store ended above its bound."""
    store = open_store(tmp_path, max_count=1)
    first = store.create("chat", acquire=True)
    with pytest.raises(StoreFull):
        store.create("chat", acquire=True)
    assert store.totals()[0] == 1 and store.get(first.id).id == first.id
    store.release(first.id)
    second = store.create("chat", acquire=True)
    with pytest.raises(ConversationNotFound, match="lru"):
        store.get(first.id)
    assert store.totals()[0] == 1 and second.id in store.busy

    def race(_):
        try:
            return store.create("completion", acquire=True).id
        except StoreFull:
            return None

    store.release(second.id)
    with ThreadPoolExecutor(8) as pool:
        got = [c for c in pool.map(race, range(16)) if c is not None]
    assert len(got) == 1 and store.totals()[0] == 1 and store.busy == {got[0]}


def test_listing_pages_through_live_conversations(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock, ttl_s=100)
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
    clock.t += 99.5  # the first four are past their ttl
    assert [c.id for c in store.list(10)[0]] == ids[4:]
    with pytest.raises(ConversationNotFound):
        store.list(2, after="conv_" + "0" * 24)


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
