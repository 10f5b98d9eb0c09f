"""Entry point of the ``retnet`` command.

Every module ``retnet/cli/cmd_<name>.py`` defines ``register(subparsers)``, which adds its subcommand and
sets ``func`` (taking the parsed ``argparse.Namespace`` and returning an exit code). Modules are found
automatically, so adding a subcommand never edits this file. Other installed distributions add subcommands the
same way through the ``retnet.cli`` entry points (:mod:`retnet.cli.plugins`; the benchmark suite adds ``bench``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import NoReturn

from retnet.cli.errors import CLIError
from retnet.cli.plugins import providers


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other user error (subcommands too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="retnet", description="Retentive Networks: train, generate, serve, bench.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import retnet.cli as cli_pkg

    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"retnet.cli.{info.name}").register(subparsers)
    for _, entry_point in sorted(providers().items()):
        entry_point.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (exit 2) or --help (exit 0): returned, as every other outcome
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"retnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
