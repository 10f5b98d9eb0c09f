"""Bad model directories: `info`, `generate` and `serve` give one line naming the file (and field), exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retnet.models import RetNetConfig, RetNetForCausalLM

from .helpers import run_cli

SMALL = dict(vocab_size=256, hidden_size=16, num_layers=1, num_heads=2, value_dim=16, ffn_dim=16)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "m"
    RetNetForCausalLM(RetNetConfig(**SMALL)).save_pretrained(d)
    return d


def _one_line_error(capsys, argv, *needles) -> None:
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _set_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize("command", ["info", "generate"])
def test_invalid_json_config(capsys, model_dir, command):
    (model_dir / "config.json").write_text('{"vocab_size": 256,')
    _one_line_error(capsys, [command, model_dir], "config.json is not valid JSON", "line 1")


@pytest.mark.parametrize("command", ["info", "generate"])
def test_config_linked_to_dev_zero(capsys, model_dir, command):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this platform")
    (model_dir / "config.json").unlink()
    (model_dir / "config.json").symlink_to("/dev/zero")
    _one_line_error(capsys, [command, model_dir], "config.json is not a regular file")


@pytest.mark.parametrize("command", ["info", "generate"])
def test_bad_config_field(capsys, model_dir, command):
    _set_config(model_dir, rotary_base=0)
    _one_line_error(capsys, [command, model_dir], "config.json: rotary_base must be a positive number")


@pytest.mark.parametrize("command", ["info", "generate"])
def test_bad_tokenizer_file(capsys, model_dir, command):
    (model_dir / "tokenizer.json").write_text("{not a tokenizer")
    _one_line_error(capsys, [command, model_dir, *(["--prompt", "x"] if command == "generate" else [])],
                    "tokenizer.json is not a valid tokenizer file")  # fmt: skip


def test_info_without_tokenizer_still_describes_the_model(capsys, model_dir):
    _set_config(model_dir, vocab_size=300)
    code, out, err = run_cli(capsys, "info", model_dir)
    assert code == 0, err
    assert "vocab_size=300" in out and "tokenizer:" not in out


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"hidden_size": -5}, "hidden_size must be a positive int"),
        ({"num_layers": 1_000_000}, "num_layers must be <= 10000"),
        ({"vocab_size": 1 << 24, "hidden_size": 8192}, "vocab_size 16777216, hidden_size 8192"),
    ],
)
def test_serve_refuses_impossible_sizes_before_allocating(capsys, model_dir, monkeypatch, changes, field):
    monkeypatch.setattr(RetNetForCausalLM, "__init__", lambda *a, **k: pytest.fail("built an impossible model"))
    _set_config(model_dir, **changes)
    _one_line_error(capsys, ["serve", model_dir, "--data-dir", model_dir.parent / "d"], f"config.json: {field}")
    assert not (model_dir.parent / "d").exists()


def test_generate_with_a_tokenizer_smaller_than_the_model(capsys, tmp_path):
    """Padded embeddings (a converted model): only the tokenizer's ids are sampled."""
    from retnet.data.tokenizers import Tokenizer

    small = tmp_path / "small"
    RetNetForCausalLM(RetNetConfig(**{**SMALL, "vocab_size": 300})).save_pretrained(small)
    Tokenizer.byte().save(small)
    code, out, err = run_cli(capsys, "generate", small, "--prompt", "ab", "--max-tokens", "40", "--seed", "3")
    assert code == 0, err
    assert out.startswith("ab") and len(out) > 3
