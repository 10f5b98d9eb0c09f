"""``retnet bench`` without the benchmark suite installed: one line saying how to install it, exit code 2."""

from __future__ import annotations

import pytest

from retnet.cli import cmd_bench
from retnet.cli import main as cli_main


@pytest.mark.parametrize("argv", [["bench"], ["bench", "decode", "--help"], ["bench", "kernels", "--check"]])
def test_bench_without_the_suite_says_how_to_install_it(argv, monkeypatch, capsys):
    monkeypatch.setattr(cmd_bench, "providers", dict)  # as if no distribution had a `retnet.cli` entry point
    monkeypatch.setattr(cli_main, "providers", dict)
    assert cli_main.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"retnet bench: error: {cmd_bench.INSTALL_HINT}"]
    assert "pip install -e ./benchmarks" in err


def test_the_placeholder_steps_aside_for_an_installed_provider(monkeypatch):
    monkeypatch.setattr(cmd_bench, "providers", lambda: {"bench": object()})
    parser = cli_main.OneLineParser(prog="retnet")
    subparsers = parser.add_subparsers(dest="command")
    cmd_bench.register(subparsers)
    assert "bench" not in subparsers.choices
