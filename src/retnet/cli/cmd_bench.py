"""``retnet bench`` without the benchmark suite: a placeholder that says how to install it.

The suite is its own distribution (``retnet-benchmarks``, ``benchmarks/`` in the repository); installed, it adds
the real ``retnet bench`` through the ``retnet.cli`` entry points (:mod:`retnet.cli.plugins`) and this adds nothing.
"""

from __future__ import annotations

import argparse

from retnet.cli.errors import CLIError
from retnet.cli.plugins import providers

INSTALL_HINT = "the benchmark suite is not installed; from a checkout of the repository: pip install -e ./benchmarks"


def _missing(args: argparse.Namespace) -> int:
    raise CLIError(INSTALL_HINT)


def register(subparsers: argparse._SubParsersAction) -> None:
    if "bench" in providers():
        return
    # No option prefix: every word after `bench` (names, flags, --help) is taken as is, so any call gets the hint.
    parser = subparsers.add_parser(
        "bench", help="run a benchmark (needs: pip install -e ./benchmarks)", prefix_chars="\0"
    )
    parser.add_argument("words", nargs=argparse.REMAINDER)
    parser.set_defaults(func=_missing)
