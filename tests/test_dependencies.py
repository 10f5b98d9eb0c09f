"""The installed third-party releases are the ones ``pyproject.toml`` declares support for.

CI runs the tests that touch third-party APIs with the locked, the newest and the oldest supported releases; this
test names the package when an environment holds a release outside the declared range (a stale venv, a manual
upgrade), so that a failure elsewhere is not blamed on our code by mistake.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return [Requirement(s) for s in specs]


def test_installed_releases_are_within_the_declared_ranges():
    outside = []
    for req in declared_requirements():
        installed = importlib.metadata.version(req.name)
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            outside.append(f"{req.name} {installed} (pyproject.toml declares {req})")
    assert not outside, "installed releases outside the declared ranges: " + "; ".join(outside)


def test_the_lock_pins_every_declared_dependency():
    lock = (REPO / "requirements" / "constraints.txt").read_text().splitlines()
    pinned = {line.split("==")[0].strip().lower().replace("_", "-") for line in lock if "==" in line}
    not_locked = {
        line.strip().lower()
        for line in (REPO / "requirements" / "not-locked.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    missing = [r.name for r in declared_requirements() if r.name.lower().replace("_", "-") not in pinned | not_locked]
    assert not missing, f"requirements/constraints.txt lacks {missing}: refresh it (command in its first lines)"
