"""The repository stands alone: no tracked file points at material a clone does not have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A spec kept outside the repository, or a relative path that starts by leaving the repository (``../x``,
# not a runtime path such as ``MODEL_DIR/../x``).
OUTSIDE = re.compile(r"retnet-spec|shared/|(?:^|[\s`'\"(\[<=])\.\./")


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / name for name in out.decode().split("\0") if name]
    return [f for f in files if f.is_file() and b"\0" not in f.read_bytes()[:8192]]


def test_outside_pattern_catches_what_it_should():
    for bad in ("see ../shared/notes.md", "read `../x.md`", "[spec](../spec.md)", "retnet-spec.md", "shared/x"):
        assert OUTSIDE.search(bad), bad
    for ok in ("MODEL_DIR/../<name>-conversations", "docs/retention.md", "a.shared_kv", "x = 1../2"):
        assert not OUTSIDE.search(ok), ok


def test_no_file_refers_outside_the_repository():
    files = _tracked_text_files()
    assert any(f.name == "retention.md" for f in files)  # the listing works and holds the docs
    me = Path(__file__).resolve()
    hits = []
    for f in files:
        if f.resolve() == me:
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "references outside the repository (put the material in docs/):\n" + "\n".join(hits)
