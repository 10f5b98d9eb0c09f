"""``retnet train --task`` and ``retnet eval --task``: classifiers end to end, and their errors."""

from __future__ import annotations

import json

from retnet.cli.main import main


def test_train_and_eval_digits_task(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "--task", "digits", "--steps", "5", "--out", str(out), "--no-progress"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(out), "--task", "digits", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["accuracy"] == json.loads((out / "metrics.json").read_text())["accuracy"]
    assert main(["eval", str(out), "--task", "genre"]) == 2
    assert "not one for task 'genre'" in capsys.readouterr().err


def test_eval_task_on_missing_dir(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--task", "digits"]) == 2
    assert "config file not found" in capsys.readouterr().err
