"""Benchmarks run by ``retnet bench NAME``.

Each module ``retnet/benchmarks/bench_<name>.py`` defines ``register(subparsers)`` that adds the
subcommand ``retnet bench <name>``; modules are discovered automatically. Results are written with
:func:`retnet.benchmarks.report.write_report` (JSON + Markdown table + PNG chart under ``docs/benchmarks/``).
"""
