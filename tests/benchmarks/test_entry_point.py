"""The installed suite adds ``retnet bench`` through the ``retnet.cli`` entry points, with every benchmark."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import retnet_benchmarks
from retnet.cli.main import build_parser
from retnet.cli.plugins import providers


def test_the_suite_is_the_bench_provider():
    assert providers()["bench"].value == "retnet_benchmarks.cli:register"


def test_every_bench_module_is_a_subcommand():
    names = {m.name for m in pkgutil.iter_modules(retnet_benchmarks.__path__) if m.name.startswith("bench_")}
    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    commands = set(bench._subparsers._group_actions[0].choices)
    assert len(commands) == len(names) >= 14
    assert {n.removeprefix("bench_").replace("_", "-") for n in names} == commands


def test_no_benchmark_imports_another():
    """Shared pieces live in the harness modules (measure, report, options, baseline, peers), not in a bench."""
    root = Path(retnet_benchmarks.__file__).parent
    offenders = []
    for path in sorted(root.glob("bench_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("retnet_benchmarks.bench_")]
    assert offenders == []
    assert len(list(root.glob("bench_*.py"))) >= 14
