"""``retnet bench NAME``: this distribution's ``retnet.cli`` entry point; each ``bench_<name>.py`` adds one NAME."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from retnet.cli.flags import add_decode_speed_flags


def _command(func: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    """One contract for every benchmark's ``func``: freed memory kept for reuse (in-process cases repeat large
    allocations as training does); a dict result (the summary) is printed and exits 0, a number is the exit code."""

    def run(args: argparse.Namespace) -> int:
        from retnet.runtime.malloc import retain_freed_memory

        retain_freed_memory()
        result = func(args)
        if isinstance(result, dict):
            print(result)
            return 0
        return int(result or 0)

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark (results under docs/benchmarks/)")
    bench_sub = parser.add_subparsers(dest="bench_name", metavar="NAME")
    import retnet_benchmarks as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("bench_"):
            importlib.import_module(f"retnet_benchmarks.{info.name}").register(bench_sub)
    for sub in bench_sub.choices.values():
        sub.set_defaults(func=_command(sub.get_default("func")))
        if sub.get_default("decode_speed_flags"):  # benchmarks that decode take the CLI's own flags
            add_decode_speed_flags(sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
