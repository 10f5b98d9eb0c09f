"""The response log in one SQLite file next to the conversation index (``--data-dir``/``responses.sqlite``):
:class:`retnet.serving.response_log.ResponseLog` for the embedded store. A record is one row, written in one
statement; the logits are safetensors bytes in a BLOB."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import astuple
from pathlib import Path

from retnet.serving.response_log import Prompt, ResponseRecord

LOG_FILE = "responses.sqlite"
COLUMNS = "id, conv_id, previous_id, root_id, created, body, input, prompt_key, prompt_conv_id, prompt_tokens, logits"
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


class SQLiteResponseLog:
    """:class:`retnet.serving.response_log.ResponseLog` in ``root``/``responses.sqlite``."""

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
