"""The package's one-way layers (CONTRIBUTING.md): no import cycles inside ``retnet``, nothing imports upward.

Every ``import`` statement counts, also those inside functions: a lazy import that closes a cycle still ties
the two modules together.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import retnet
import retnet.models

SRC = Path(retnet.__file__).parent
# ops -> layers -> models -> {generation, data, training, serving, hf} -> cli; runtime below all.
RANK = {"runtime": 0, "ops": 1, "layers": 2, "models": 3, "cli": 5}
RANK.update({name: 4 for name in ("generation", "data", "training", "serving", "hf")})
# The benchmark suite (benchmarks/ in the repository) is a client of the library, never imported by it.
CLIENT = "retnet_benchmarks"


def module_name(path: Path) -> str:
    parts = ["retnet", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The module a dotted import name lands in (``retnet.models.RetNetConfig`` -> ``retnet.models``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for n in names if n.startswith("retnet") and (target := resolve(n)) not in (None, module)}
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def rank(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], 6) if len(parts) > 1 else 6  # retnet/__init__, __main__: the top


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or ``None`` (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_inside_retnet():
    assert find_cycle(GRAPH) is None


def test_nothing_imports_upward():
    upward = sorted(
        (module, target) for module, targets in GRAPH.items() for target in targets if rank(target) > rank(module)
    )
    assert upward == []


def test_the_library_never_imports_the_benchmark_suite():
    """``retnet bench`` reaches the suite through an entry point (``retnet.cli.plugins``): no module of the
    library names it, in an import statement or in a string for ``importlib``."""
    offenders = [module for module, path in MODULES.items() if CLIENT in path.read_text(encoding="utf-8")]
    assert offenders == []
    assert not [m for m in MODULES if m.startswith("retnet.benchmarks")]  # the suite moved out of the wheel


def test_every_models_module_imports_on_its_own():
    names = [info.name for info in pkgutil.walk_packages(retnet.models.__path__, "retnet.models.")]
    assert "retnet.models.directory" in names and "retnet.models.io" in names
    for name in names:
        importlib.import_module(name)


def test_one_place_reads_config_json_and_one_writes_atomically():
    """Only :mod:`retnet.models.directory` opens files by their layout name or renames a temporary over a file."""
    owner = SRC / "models" / "directory.py"
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == owner:
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ('"config.json"', '"tokenizer.json"', '"model.safetensors"', "os.replace(", "mkstemp("):
            if needle in text:
                offenders.append(f"{path.relative_to(SRC)}: {needle}")
    # The trainer probes that its output folder is writable with a temporary file (no rename).
    assert offenders == ["training/trainer.py: mkstemp("]
