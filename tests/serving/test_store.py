"""The SQLite + files store's own promises: its files (persistence, replaced state files, orphans, markers,
symbolic links). What every store promises (locks, bounds, eviction, listing) is in test_store_backends.py."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from retnet.models import RetNetState
from retnet.serving.store import StoreError
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
