"""``retnet bench NAME``: run a benchmark; each ``retnet/benchmarks/bench_<name>.py`` adds one NAME."""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark (results under docs/benchmarks/)")
    bench_sub = parser.add_subparsers(dest="bench_name", metavar="NAME")
    import retnet.benchmarks as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("bench_"):
            importlib.import_module(f"retnet.benchmarks.{info.name}").register(bench_sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
