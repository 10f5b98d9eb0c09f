"""The embedded conversation store (the default): a SQLite index and one safetensors file per state.

A conversation's record holds its state file, the ids of tokens generated but not yet folded into the state
(``pending``: the last sampled token and the turn's closing), and use times. A new turn writes a new state
file, commits the index row that points to it, then deletes the old file, so a crash at any point leaves a
consistent pair. The store is bounded by count and total bytes (least recently used conversations go first)
and by a time-to-live since last use. A small write-through memory cache keeps hot states off the disk read
path.

The store owns only what it creates. Its folder carries a marker file written when the store is created; a
non-empty folder without it is refused, and so are a symlinked ``states`` folder, index or marker (so a
foreign database is never opened and nothing is followed elsewhere). At start only files named like its own
state files and temporary files, with no index row, are removed; anything else in the folder is left alone.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path

from retnet.models import RetNetState
from retnet.models.directory import atomic_write_json
from retnet.serving.state_io import load_state, save_state
from retnet.serving.state_lru import StateLRU
from retnet.serving.store import (
    MAX_TOMBSTONES,
    Conversation,
    ConversationBusy,
    ConversationNotFound,
    StoreError,
    StoreFull,
    new_conversation_id,
    store_stats,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    state_file TEXT,
    nbytes INTEGER NOT NULL DEFAULT 0,
    pending TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS conversations_last_used ON conversations(last_used);
CREATE TABLE IF NOT EXISTS tombstones (id TEXT PRIMARY KEY, reason TEXT NOT NULL, time REAL NOT NULL);
"""
MARKER = "retnet-store.json"
MARKER_FORMAT = "retnet-conversation-store"
INDEX = "index.sqlite"
OWN_FILES = (MARKER, "states", INDEX, INDEX + "-wal", INDEX + "-shm", INDEX + "-journal")
STATE_FILE = re.compile(r"(conv_[0-9a-f]{24})\.[0-9]+\.safetensors")
TEMP_FILE = re.compile(r"\.conv_[0-9a-f]{24}\.[0-9]+\.safetensors\.[A-Za-z0-9_]+\.tmp")  # atomic_write's


class SQLiteStore:
    """:class:`retnet.serving.store.ConversationStore` in a folder: SQLite index, safetensors state files."""

    def __init__(
        self,
        root: Path,
        *,
        fingerprint: str,
        max_count: int,
        max_bytes: int,
        ttl_s: float,
        cache_bytes: int = 0,
        clock=time.time,
    ) -> None:
        self.root = Path(root)
        self.states_dir = self.root / "states"
        claim_folder(self.root)
        self.max_count, self.max_bytes, self.ttl_s, self.cache_bytes = max_count, max_bytes, ttl_s, cache_bytes
        self.clock = clock
        self.lock = threading.RLock()
        self.busy: set[str] = set()
        self.cache: StateLRU[str] = StateLRU(cache_bytes)  # id -> (state, state_file)
        self.evictions = {"lru": 0, "expired": 0}
        self.db = sqlite3.connect(self.root / INDEX, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (fingerprint,))
        elif row[0] != fingerprint:
            self.db.close()
            raise StoreError(
                f"data folder {self.root} holds conversation states of a different model; "
                "use another --data-dir (or delete that folder)"
            )
        self._remove_orphans()

    # ---------------------------------------------------------------- records
    def _row(self, conv_id: str) -> Conversation | None:
        r = self.db.execute(
            "SELECT id, kind, created, last_used, turns, tokens, state_file, nbytes, pending "
            "FROM conversations WHERE id=?",
            (conv_id,),
        ).fetchone()
        if r is None:
            return None
        return Conversation(*r[:8], pending=json.loads(r[8]))

    def create(self, kind: str, *, acquire: bool = False) -> Conversation:
        """A new conversation, made room for under the bounds first and, with ``acquire``, marked busy in the
        same step (so no other request can evict it before its first turn). :class:`StoreFull` when every
        stored conversation is mid-turn and the count bound is reached."""
        with self.lock:
            self._enforce_bounds(room=1)
            if self.totals()[0] + 1 > self.max_count:
                raise StoreFull(self.max_count)
            now = self.clock()
            conv_id = new_conversation_id()
            self.db.execute(
                "INSERT INTO conversations (id, kind, created, last_used) VALUES (?, ?, ?, ?)",
                (conv_id, kind, now, now),
            )
            if acquire:
                self.busy.add(conv_id)
            return self._row(conv_id)

    def get(self, conv_id: str) -> Conversation:
        """The record, or :class:`ConversationNotFound` (unknown, expired or evicted)."""
        with self.lock:
            conv = self._row(conv_id)
            if conv is None:
                t = self.db.execute("SELECT reason FROM tombstones WHERE id=?", (conv_id,)).fetchone()
                raise ConversationNotFound(conv_id, t[0] if t else "unknown")
            if conv_id not in self.busy and self.clock() - conv.last_used > self.ttl_s:
                self._delete(conv, "expired")
                raise ConversationNotFound(conv_id, "expired")
            return conv

    def delete(self, conv_id: str) -> None:
        with self.lock:
            conv = self.get(conv_id)
            if conv_id in self.busy:
                raise ConversationBusy(conv_id)
            self._delete(conv, "deleted")

    def list(
        self, limit: int = 100, *, after: str | None = None, order: str = "desc"
    ) -> tuple[list[Conversation], bool]:
        """Live conversations by creation time (then id), ``order`` "desc" (newest first) or "asc", starting
        after the conversation ``after``; returns the page and whether more follow."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        with self.lock:
            where, args = "last_used >= ?", [self.clock() - self.ttl_s]
            if after is not None:
                ref = self._row(after)
                if ref is None:
                    raise ConversationNotFound(after)
                where += f" AND (created, id) {cmp} (?, ?)"
                args += [ref.created, ref.id]
            ids = [
                r[0]
                for r in self.db.execute(
                    f"SELECT id FROM conversations WHERE {where} ORDER BY created {direction}, id {direction} LIMIT ?",
                    (*args, limit + 1),
                )
            ]
            page = [c for c in (self._row(i) for i in ids[:limit]) if c is not None]
            return page, len(ids) > limit

    # ---------------------------------------------------------------- turns
    def acquire(self, conv_id: str) -> Conversation:
        """Mark the conversation busy for one turn (a second concurrent turn gets :class:`ConversationBusy`)."""
        with self.lock:
            conv = self.get(conv_id)
            if conv_id in self.busy:
                raise ConversationBusy(conv_id)
            self.busy.add(conv_id)
            return conv

    def release(self, conv_id: str) -> None:
        with self.lock:
            self.busy.discard(conv_id)

    def load(self, conv: Conversation) -> RetNetState | None:
        """The stored state (None for a conversation without turns yet)."""
        if conv.state_file is None:
            return None
        hit = self.cache.get(conv.id)
        if hit is not None and hit[1] == conv.state_file:
            return hit[0]
        state, _ = load_state(self.states_dir / conv.state_file)
        return state

    def save_turn(self, conv_id: str, state: RetNetState, pending: list[int], new_tokens: int) -> Conversation:
        """Store the state after a turn (atomically: new file, index commit, old file removed)."""
        with self.lock:
            conv = self._row(conv_id)
            if conv is None:
                raise ConversationNotFound(conv_id, "deleted during the turn")
            turns = conv.turns + 1
            name = f"{conv_id}.{turns}.safetensors"
            nbytes = save_state(
                self.states_dir / name, state, {"conversation": conv_id, "pending": json.dumps(pending)}
            )
            self.db.execute(
                "UPDATE conversations SET last_used=?, turns=?, tokens=?, state_file=?, nbytes=?, pending=? WHERE id=?",
                (self.clock(), turns, conv.tokens + new_tokens, name, nbytes, json.dumps(pending), conv_id),
            )
            if conv.state_file != name:
                self._unlink_own(conv.state_file)
            self.cache.put(conv_id, state, name)
            self._enforce_bounds(keep=conv_id)
            return self._row(conv_id)

    # ---------------------------------------------------------------- bounds
    def _delete(self, conv: Conversation, reason: str) -> None:
        self.db.execute("DELETE FROM conversations WHERE id=?", (conv.id,))
        self.db.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", (conv.id, reason, self.clock()))
        self._unlink_own(conv.state_file)
        self.cache.drop(conv.id)
        if reason in self.evictions:
            self.evictions[reason] += 1

    def _enforce_bounds(self, keep: str | None = None, room: int = 0) -> None:
        """Drop expired conversations, then the least recently used until count (plus ``room`` new ones) and
        bytes fit. Conversations mid-turn are never dropped."""
        cutoff = self.clock() - self.ttl_s
        for (conv_id,) in self.db.execute("SELECT id FROM conversations WHERE last_used < ?", (cutoff,)).fetchall():
            if conv_id not in self.busy and conv_id != keep:
                self._delete(self._row(conv_id), "expired")
        count, total = self.totals()
        limit = self.max_count - room
        if count > limit or total > self.max_bytes:
            for (conv_id,) in self.db.execute("SELECT id FROM conversations ORDER BY last_used").fetchall():
                if count <= limit and total <= self.max_bytes:
                    break
                if conv_id in self.busy or conv_id == keep:
                    continue
                conv = self._row(conv_id)
                self._delete(conv, "lru")
                count, total = count - 1, total - conv.nbytes
        n = self.db.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]
        if n > MAX_TOMBSTONES:
            self.db.execute(
                "DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones ORDER BY time LIMIT ?)",
                (n - MAX_TOMBSTONES,),
            )

    def sweep(self) -> None:
        with self.lock:
            self._enforce_bounds()

    def totals(self) -> tuple[int, int]:
        count, total = self.db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM conversations").fetchone()
        return int(count), int(total)

    def _unlink_own(self, name: str | None) -> None:
        """Delete one of our state files (a name we did not write, e.g. from an edited index, is left alone, and so
        is anything but a regular file)."""
        if name and STATE_FILE.fullmatch(name):
            path = self.states_dir / name
            if path.is_file() and not path.is_symlink():  # a folder or link put there is not ours either
                path.unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        """Remove state files no row points to and temporary files of interrupted writes: only names of the
        kinds this store writes, only regular files; everything else in the folder is not ours to touch."""
        referenced = {
            r[0] for r in self.db.execute("SELECT state_file FROM conversations WHERE state_file IS NOT NULL")
        }
        for path in self.states_dir.iterdir():
            ours = STATE_FILE.fullmatch(path.name) or TEMP_FILE.fullmatch(path.name)
            if ours and path.name not in referenced and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)

    def stats(self) -> dict:
        with self.lock:
            count, total = self.totals()
            return store_stats(self, count, total, self.evictions, len(self.busy), backend="sqlite")

    def close(self) -> None:
        with self.lock:
            self.db.close()


def claim_folder(root: Path) -> None:
    """Create or adopt ``root`` as a conversation store, or raise :class:`StoreError` naming the problem.

    A new or empty folder gets the marker file; a marked folder is ours; a folder laid out by a store of an
    older version (only our index and ``states``, the index holding our tables) is adopted. Anything else is
    someone else's: refused, never written to. Symlinks where our files go are refused too."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"data folder {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:
        if (root / name).is_symlink():
            raise StoreError(f"{root / name} is a symbolic link; the conversation store uses only files it created")
    marker = root / MARKER
    if marker.exists():
        try:
            ok = json.loads(marker.read_text()).get("format") == MARKER_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise StoreError(f"{marker} is not a retnet conversation store marker; use another --data-dir")
    else:
        entries = sorted(p.name for p in root.iterdir())
        if entries and not _older_store(root, entries):
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise StoreError(
                f"data folder {root} is not empty and is not a retnet conversation store (it has no {MARKER}); "
                f"use a new or empty --data-dir (it holds: {shown})"
            )
        atomic_write_json(marker, {"format": MARKER_FORMAT, "version": 1})
    states = root / "states"
    states.mkdir(exist_ok=True)
    if not states.is_dir():
        raise StoreError(f"{states} exists and is not a directory")


def _older_store(root: Path, entries: list[str]) -> bool:
    """A store written before the marker existed: our file names only, and an index with our tables
    (opened read-only, so a foreign database is not changed)."""
    if not set(entries) <= set(OWN_FILES) or INDEX not in entries or not (root / INDEX).is_file():
        return False
    try:
        db = sqlite3.connect(f"{(root / INDEX).resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            fingerprint = None
            if "meta" in tables:
                fingerprint = db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return {"meta", "conversations", "tombstones"} <= tables and fingerprint is not None
