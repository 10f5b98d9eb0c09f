"""The installed suite adds ``retnet bench`` through the ``retnet.cli`` entry points, with every benchmark."""

from __future__ import annotations

import pkgutil

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
