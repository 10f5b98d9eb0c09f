"""The records of stored Responses API responses: what each one said, and which stored state holds its end.

A response's state lives in the conversation store (one conversation of kind ``response`` per response, never
changed after its turn), so continuing from any response forks there and reads nothing but that state. This
log keeps the rest: the public response object, its input items, its parent and the root of its tree (for the
chat page's list of conversations), and where its prompt ended (a ``prompt`` conversation and the last logits)
so that a regenerate needs no forward pass. It is one SQLite file next to the conversation index; a record is only
as alive as its state (the routes drop a record whose state was evicted or expired).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import astuple, dataclass
from pathlib import Path

LOG_FILE = "responses.sqlite"
COLUMNS = "id, conv_id, previous_id, root_id, created, body, input, prompt_key, prompt_conv_id, prompt_tokens, logits"
RESP_ID = re.compile(r"resp_[0-9a-f]{24}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    conv_id TEXT NOT NULL,
    previous_id TEXT,
    root_id TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL,
    input TEXT NOT NULL,
    prompt_key TEXT,
    prompt_conv_id TEXT,
    prompt_tokens INTEGER,
    logits BLOB
);
CREATE INDEX IF NOT EXISTS responses_created ON responses(created, id);
CREATE INDEX IF NOT EXISTS responses_prompt ON responses(prompt_key);
CREATE INDEX IF NOT EXISTS responses_root ON responses(root_id);
"""


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


class ResponseLog:
    def __init__(self, root: Path) -> None:
        path = Path(root) / LOG_FILE
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; the server uses only files it created")
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def add(self, rec: ResponseRecord) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.id, rec.conv_id, rec.previous_id, rec.root_id, rec.created, json.dumps(rec.body),
                 json.dumps(rec.input), *(astuple(rec.prompt) if rec.prompt else (None,) * 4)),
            )  # fmt: skip

    def prompt(self, key: str) -> Prompt | None:
        """The newest stored prompt with this key (one whose state may since have been evicted)."""
        with self.lock:
            row = self.db.execute(
                "SELECT prompt_key, prompt_conv_id, prompt_tokens, logits FROM responses WHERE prompt_key=? "
                "ORDER BY created DESC LIMIT 1",
                (key,),
            ).fetchone()
        return None if row is None else Prompt(*row)

    def prompt_users(self, conv_id: str) -> int:
        """How many records share the prompt state ``conv_id``."""
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM responses WHERE prompt_conv_id=?", (conv_id,)).fetchone()[0]

    def get(self, resp_id: str) -> ResponseRecord | None:
        with self.lock:
            row = self.db.execute(f"SELECT {COLUMNS} FROM responses WHERE id=?", (resp_id,)).fetchone()
        return None if row is None else _record(row)

    def delete(self, resp_id: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM responses WHERE id=?", (resp_id,))

    def list(
        self, limit: int, *, after: str | None = None, order: str = "desc", root_id: str | None = None,
        roots_only: bool = False,
    ) -> tuple[list[ResponseRecord], bool]:  # fmt: skip
        """Records by creation time (then id), ``order`` "desc" or "asc", after the record ``after``, only those
        of the tree ``root_id`` and/or only roots; returns the page and whether more follow. ``after`` must
        exist (LookupError otherwise)."""
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where, args = ["1"], []
        with self.lock:
            if after is not None:
                ref = self.db.execute("SELECT created, id FROM responses WHERE id=?", (after,)).fetchone()
                if ref is None:
                    raise LookupError(after)
                where.append(f"(created, id) {cmp} (?, ?)")
                args += list(ref)
            if root_id is not None:
                where.append("root_id = ?")
                args.append(root_id)
            if roots_only:
                where.append("id = root_id")
            rows = self.db.execute(
                f"SELECT {COLUMNS} FROM responses WHERE {' AND '.join(where)} "
                f"ORDER BY created {direction}, id {direction} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _record(row: tuple) -> ResponseRecord:
    rid, conv_id, previous_id, root_id, created, body, items, *prompt = row
    rec = ResponseRecord(rid, conv_id, previous_id, root_id, created, json.loads(body), json.loads(items))
    rec.prompt = Prompt(*prompt) if prompt[0] is not None else None
    return rec
