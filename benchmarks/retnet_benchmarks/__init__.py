"""The benchmark suite, run as ``retnet bench NAME``: a client of ``retnet``, outside its installed package.

Each module ``retnet_benchmarks/bench_<name>.py`` defines ``register(subparsers)`` that adds the subcommand
``retnet bench <name>``; :mod:`retnet_benchmarks.cli` discovers them. Cases run in fresh processes through
:mod:`retnet_benchmarks.measure`, results are written with :func:`retnet_benchmarks.report.write_report`
(JSON + Markdown table + PNG chart under ``docs/benchmarks/``).
"""
