"""`retnet convert --tokenizer FILE`: a converted torchscale model that `generate` and `serve` can load."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from retnet.data.tokenizers import Tokenizer, byte_to_char

from .helpers import run_cli, snapshot

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "torchscale_tiny.safetensors"  # vocab 64
LETTERS = b" abcdefghijklmnopqrstuvwxyz.,"


def small_tokenizer_file(path: Path) -> Path:
    """A byte-level tokenizer of 29 single-byte tokens (fewer than the checkpoint's 64 embedding rows)."""
    hf = HFTokenizer(models.BPE(vocab={byte_to_char()[b]: i for i, b in enumerate(LETTERS)}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.save(str(path))
    return path


def convert(capsys, out: Path, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "convert", "--from", "torchscale", FIXTURE, out, "--embed-scale", "sqrt", *extra)


def test_converted_model_with_tokenizer_generates_and_loads_for_serving(capsys, tmp_path):
    tok_file = small_tokenizer_file(tmp_path / "tok.json")
    out = tmp_path / "m"
    code, printed, err = convert(capsys, out, "--tokenizer", tok_file)
    assert code == 0, err
    assert "(29 tokens)" in printed
    assert (out / "tokenizer.json").read_bytes() == tok_file.read_bytes()
    assert (out / "tokenizer_config.json").is_file()

    code, text, err = run_cli(capsys, "generate", out, "--prompt", "the cat", "--max-tokens", "30", "--seed", "1")
    assert code == 0, err
    assert text.startswith("the cat") and set(text.strip().encode()) <= set(LETTERS)

    from retnet.serving.app import create_app
    from retnet.serving.config import ServerConfig

    app = create_app(ServerConfig(out, data_dir=tmp_path / "conversations", threads=1))
    assert app is not None


def test_without_a_tokenizer_serving_names_the_missing_file(capsys, tmp_path):
    from retnet.models.directory import CheckpointError
    from retnet.serving.app import create_app
    from retnet.serving.config import ServerConfig

    assert convert(capsys, tmp_path / "m")[0] == 0
    with pytest.raises(CheckpointError, match="tokenizer file not found"):
        create_app(ServerConfig(tmp_path / "m", data_dir=tmp_path / "d", threads=1))


def test_bad_or_too_large_tokenizer_is_refused_and_nothing_written(capsys, tmp_path):
    out = tmp_path / "m"
    (tmp_path / "bad.json").write_text('{"model": 1}')
    for tok_file, needle in [
        (tmp_path / "bad.json", "bad.json is not a valid tokenizer file"),
        (tmp_path / "nope.json", "--tokenizer file not found"),
        (Tokenizer.byte().save(tmp_path / "byte"), "has 256 tokens but the checkpoint's vocabulary only 64"),
    ]:
        code, _, err = convert(capsys, out, "--tokenizer", tok_file)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
        assert snapshot(out) == {}
