"""Property (issue 20): any value of any numeric flag of train, generate, eval and chat either works or is
refused with exit code 2 and one line on stderr; never a traceback, never a hang, and a refusal writes,
overwrites or deletes nothing. The numeric flags are read from the parser, so a new one is covered at once.
``retnet info`` has no numeric flag."""

from __future__ import annotations

import argparse
import io
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retnet.cli.main import build_parser

from .helpers import run_cli, snapshot

SECONDS_PER_RUN = 20
MODEL_SET_KEYS = ("hidden_size", "num_layers", "num_heads", "value_dim", "ffn_dim")

# Integers: all of them below 5, and huge ones (2**63 and 2**64 are where C integers overflow). Between lie
# valid amounts of work that simply take long, which is what the user asked for.
INTS = st.one_of(
    st.integers(-(2**70), 4), st.integers(10**12, 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64])
).map(str)
FLOATS = st.one_of(st.floats().map(repr), st.sampled_from(["1e400", "-0", "5e-324", "1e-45", "1e-300", "0.5"]))
JUNK = st.sampled_from(["", "ten", "1.5", "0x10", "nan", "1e3"])
# Flags whose every valid value is an amount of work: only small ones are drawn.
WORK = {("generate", "--max-tokens"), ("chat", "--max-tokens")}


def numeric_flags(command: str) -> dict[str, str]:
    """``{flag: "int" | "float"}`` for every option of ``retnet COMMAND`` that parses a number."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    kinds = {a.option_strings[-1]: getattr(a.type, "__name__", "") for a in sub._actions if a.option_strings}
    return {flag: kind for flag, kind in kinds.items() if kind in ("int", "float")}


def flag_values(command: str) -> st.SearchStrategy[list[str]]:
    """One or two ``--flag=value`` arguments with hostile values."""
    choices = [(f, k) for f, k in numeric_flags(command).items()]
    if command == "train":
        choices += [(f"--model-set {key}", "int") for key in MODEL_SET_KEYS]

    @st.composite
    def one(draw) -> list[str]:
        flag, kind = draw(st.sampled_from(choices))
        if (command, flag) in WORK:
            value = draw(st.one_of(st.integers(-(2**70), 4).map(str), JUNK))
        else:
            value = draw(st.one_of(INTS if kind == "int" else FLOATS, JUNK))
        if flag.startswith("--model-set"):
            return ["--model-set", f"{flag.split()[1]}={value}"]
        return [f"{flag}={value}"]

    return st.lists(one(), min_size=1, max_size=2).map(lambda pairs: [a for pair in pairs for a in pair])


@contextmanager
def time_limit(seconds: int):
    """A hang becomes a TimeoutError (and a failing example) instead of a stuck test run."""

    def expire(signum, frame):
        raise TimeoutError(f"the command ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_outcome(capsys, argv: list[str], protected: list[Path]) -> None:
    before = [snapshot(p) for p in protected]
    threads = torch.get_num_threads()
    try:
        with time_limit(SECONDS_PER_RUN):
            code, _, err = run_cli(capsys, *argv)
    finally:
        torch.set_num_threads(threads)
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("retnet"), err
        assert [snapshot(p) for p in protected] == before, "a refused command changed files"


PROPERTY = settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def scratch(tmp_path, monkeypatch, trained_dir):
    """A working folder (the current directory) with a copy of a trained model and a small corpus."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(trained_dir, model)
    corpus = tmp_path / "small.txt"
    corpus.write_text((trained_dir.parent / "data" / "corpus.txt").read_text()[:3000])
    return tmp_path, model, corpus


def test_every_command_has_numeric_flags_found():
    assert {"--lr", "--steps", "--seed", "--threads", "--stop-after"} <= set(numeric_flags("train"))
    assert {"--temperature", "--top-k", "--top-p", "--seed", "--max-tokens"} <= set(numeric_flags("generate"))
    assert set(numeric_flags("chat")) == set(numeric_flags("generate"))
    assert {"--max-batches", "--seq-len", "--batch-size", "--val-fraction"} <= set(numeric_flags("eval"))
    assert numeric_flags("info") == {}


@PROPERTY
@given(extra=flag_values("train"))
def test_train_flags(capsys, scratch, extra):
    root, model, corpus = scratch
    base = [
        *("train", "--preset", "smoke", "--data", corpus, "--out", model, "--no-progress", "--quiet"),
        *("--steps", "2", "--stop-after", "1", "--seq-len", "8", "--batch-size", "2", "--threads", "1"),
        *("--eval-batches", "1", "--eval-batch-size", "2"),
        *("--model-set", "hidden_size=8", "--model-set", "value_dim=8", "--model-set", "ffn_dim=16"),
    ]
    check_outcome(capsys, [*base, *extra], [root])


@PROPERTY
@given(extra=flag_values("generate"))
def test_generate_flags(capsys, scratch, extra):
    root, model, _ = scratch
    check_outcome(capsys, ["generate", model, "--prompt", "To", "--max-tokens", "2", *extra], [root])


@PROPERTY
@given(extra=flag_values("chat"))
def test_chat_flags(capsys, monkeypatch, scratch, extra):
    root, model, _ = scratch
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\n"))  # every example reads one turn
    check_outcome(capsys, ["chat", model, "--max-tokens", "2", *extra], [root])


@PROPERTY
@given(extra=flag_values("eval"))
def test_eval_flags(capsys, scratch, extra):
    root, model, corpus = scratch
    base = ["eval", model, "--data", corpus, "--split", "val", "--seq-len", "8", "--max-batches", "1"]
    check_outcome(capsys, [*base, *extra], [root])
