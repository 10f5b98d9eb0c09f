"""Entry point of the ``retnet`` command.

Every module ``retnet/cli/cmd_<name>.py`` defines ``register(subparsers)``, which adds its subcommand and
sets ``func`` (taking the parsed ``argparse.Namespace`` and returning an exit code). Modules are found
automatically, so adding a subcommand never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from retnet.cli.errors import CLIError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retnet", description="Retentive Networks: train, generate, serve, bench.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import retnet.cli as cli_pkg

    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"retnet.cli.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
