from __future__ import annotations

import hashlib
from pathlib import Path

from retnet.cli.main import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, str]:
    """Hashes of every file under ``folder`` (to prove nothing was written)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_user_error(capsys, argv, match: str, protected: Path) -> str:
    """Run ``retnet *argv``: exit code 2, one line on stderr containing ``match``, ``protected`` untouched."""
    before = snapshot(protected)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert snapshot(protected) == before
    return lines[0]
