"""``retnet eval DIR --tasks``: the bundled lm-eval task's score equals ``retnet eval``'s own on the same text."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys

import pytest

from retnet.cli.main import main
from retnet.data.corpus import DOCUMENT_SEPARATOR
from retnet.data.passages import heldout_speeches
from tests.hf.helpers import byte_tokenizer, model_dir, tiny_core

from .helpers import check_user_error, run_cli

DOCS = 3
# The whole path runs without a network: the Hub and datasets libraries are told so.
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory):
    """A tiny random float32 model with the byte tokenizer: the harness and ``retnet eval`` see the same tokens."""
    return model_dir(tmp_path_factory.mktemp("tasks") / "byte", tiny_core(256, seed=5), byte_tokenizer())


@pytest.fixture(scope="module")
def harness_figures(byte_dir):
    """``retnet eval DIR --tasks retnet_shakespeare --limit 3 --json`` (the first three held-out speeches)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["eval", str(byte_dir), "--tasks", "retnet_shakespeare", "--limit", str(DOCS), "--json"])
    assert code == 0
    return json.loads(out.getvalue())["retnet_shakespeare"]


def test_bundled_task_score_equals_retnet_eval_on_the_same_speeches(capsys, tmp_path, byte_dir, harness_figures):
    nll, nbytes = 0.0, 0
    for i, speech in enumerate(heldout_speeches()[:DOCS]):
        # The harness scores a speech from the separator token; retnet eval scores every token after the first.
        path = tmp_path / f"speech{i}.txt"
        path.write_text(DOCUMENT_SEPARATOR[-1] + speech, encoding="utf-8")
        n = len(speech.encode())
        code, out, _ = run_cli(capsys, "eval", byte_dir, "--data", path, "--split", "all", "--seq-len", n, "--json")
        assert code == 0
        figures = json.loads(out)
        assert figures["tokens"] == figures["bytes"] == n
        nll += figures["loss"] * figures["tokens"]
        nbytes += figures["bytes"]
    assert math.isclose(harness_figures["bits_per_byte,none"], nll / math.log(2) / nbytes, rel_tol=1e-5)
    assert math.isclose(harness_figures["byte_perplexity,none"], math.exp(nll / nbytes), rel_tol=1e-5)


@pytest.mark.slow
def test_the_harness_command_line_runs_the_bundled_task(tmp_path, byte_dir, harness_figures):
    """``python -m retnet.hf.harness`` is lm_eval's CLI with RetNet registered: same score as ``retnet eval``."""
    from retnet.hf.harness import TASKS_DIR

    argv = [sys.executable, "-m", "retnet.hf.harness", "run", "--model", "retnet"]
    argv += ["--model_args", f"pretrained={byte_dir}", "--device", "cpu", "--include_path", str(TASKS_DIR)]
    argv += ["--tasks", "retnet_shakespeare", "--limit", str(DOCS), "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    got = json.loads(result_file.read_text())["results"]["retnet_shakespeare"]
    assert math.isclose(got["bits_per_byte,none"], harness_figures["bits_per_byte,none"], rel_tol=1e-9)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--limit", "2"], "--limit needs --tasks"),
        (["--include-path", "x"], "--include-path needs --tasks"),
        (["--tasks", "retnet_shakespeare", "--seq-len", "8"], "--seq-len does not apply to --tasks"),
        (["--tasks", "retnet_shakespeare", "--task", "genre"], "--task does not apply to --tasks"),
        (["--tasks", " , "], "--tasks names no task"),
        (["--tasks", "retnet_shakespeare", "--include-path", "/nonexistent"], "--include-path '/nonexistent'"),
        pytest.param(  # indexes lm-eval's own ~15,000 task files to be sure: tens of seconds
            ["--tasks", "no_such_task"],
            "--tasks: unknown task(s) no_such_task (bundled: retnet_shakespeare",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_user_errors_name_the_flag(capsys, tmp_path, byte_dir, extra, match):
    check_user_error(capsys, ["eval", byte_dir, *extra], match, byte_dir)
