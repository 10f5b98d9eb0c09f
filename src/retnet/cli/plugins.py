"""Subcommands from other installed distributions: the entry points of the ``retnet.cli`` group.

Each entry point names a ``register(subparsers)`` function, like the ``cmd_<name>`` modules here. The benchmark
suite (``retnet-benchmarks``, ``benchmarks/`` in the repository) adds ``retnet bench`` this way, so the library
never imports it.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

GROUP = "retnet.cli"


def providers() -> dict[str, EntryPoint]:
    """The installed ``retnet.cli`` entry points by name (the subcommand each adds)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}
