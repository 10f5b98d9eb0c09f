"""`retnet convert --from fla / --from syncdoth` (tokenizer carried over) and `retnet convert --to fla`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retnet.models import RetNetForCausalLM
from tests.models.helpers import rel_err

from .helpers import check_user_error, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FLA, SYNCDOTH = FIXTURES / "fla_tiny", FIXTURES / "syncdoth_tiny"


@pytest.mark.parametrize(
    ("fmt", "source", "case", "logits"),
    [("fla", FLA, "base", "fla_tiny_logits"), ("syncdoth", SYNCDOTH, "defaults", "syncdoth_tiny_logits")],
)
@torch.no_grad()
def test_convert_carries_the_tokenizer_and_keeps_the_logits(capsys, tmp_path, fmt, source, case, logits):
    out = tmp_path / "m"
    code, printed, err = run_cli(capsys, "convert", "--from", fmt, source / case, out)
    assert code == 0, err
    assert (out / "tokenizer.json").read_bytes() == (source / case / "tokenizer.json").read_bytes()
    assert f"copied {source / case / 'tokenizer.json'} (12 tokens)" in printed
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    if fmt == "fla":  # its bos/eos ids 1 and 2 are the tokenizer's <s> and </s>
        assert (tok_config["bos_token"], tok_config["eos_token"]) == ("<s>", "</s>")
    model = RetNetForCausalLM.from_pretrained(out)
    ref = load_file(str(FIXTURES / f"{logits}.safetensors"))
    assert rel_err(model(ref[f"{case}.input_ids"]).logits, ref[f"{case}.logits"]) < 1e-4
    code, printed, err = run_cli(capsys, "generate", out, "--prompt", "the cat", "--max-tokens", "3")
    assert code == 0, err


def test_without_a_tokenizer_the_user_is_told(capsys, tmp_path):
    code, printed, err = run_cli(capsys, "convert", "--from", "fla", FLA / "gqa", tmp_path / "m", "--dtype", "float64")
    assert code == 0, err
    assert "no tokenizer.json in" in printed and "key dim 8" in printed and "(rope frequencies)" in printed
    assert "note: num_kv_heads=2" in printed
    assert not (tmp_path / "m" / "tokenizer.json").exists()
    assert all(t.dtype == torch.float64 for t in load_file(str(tmp_path / "m" / "model.safetensors")).values())


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--from", "fla", FLA / "base", "--activation", "gelu"], "--activation applies to --from torchscale only"),
        (["--from", "syncdoth", SYNCDOTH / "defaults", "--embed-scale", "sqrt"], "--embed-scale applies"),
        (["--from", "fla", FLA / "base", "--no-normalize-decay"], "--no-normalize-decay applies"),
        (["--from", "fla", SYNCDOTH / "defaults"], "use --from syncdoth"),
        (["--from", "syncdoth", FLA / "base"], "use --from fla"),
        (["--from", "fla", FIXTURES / "nowhere"], "checkpoint directory not found"),
        (["--from", "fla", FIXTURES / "syncdoth_tiny"], "config file not found"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, argv, match):
    out = tmp_path / "m"
    check_user_error(capsys, ["convert", *argv[:2], argv[2], out, *argv[3:]], match, tmp_path)
    assert not out.exists()


def test_unsupported_field_is_named_and_nothing_written(capsys, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(FLA / "base", source)
    cfg = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**cfg, "feature_map": "relu"}))
    check_user_error(capsys, ["convert", "--from", "fla", source, tmp_path / "m"], "feature_map='relu'", tmp_path)
    (source / "config.json").write_text(json.dumps(cfg))
    (source / "tokenizer.json").write_text("{}")
    check_user_error(capsys, ["convert", "--from", "fla", source, tmp_path / "m"], "not a valid tokenizer", tmp_path)


@torch.no_grad()
def test_to_fla_and_back(capsys, tmp_path):
    ours, fla_dir, again = tmp_path / "ours", tmp_path / "fla", tmp_path / "again"
    assert run_cli(capsys, "convert", "--from", "fla", FLA / "base", ours)[0] == 0
    code, printed, err = run_cli(capsys, "convert", "--to", "fla", ours, fla_dir)
    assert code == 0, err
    assert "flash-linear-attention's RetNet format" in printed
    original = load_file(str(FLA / "base" / "model.safetensors"))
    written = load_file(str(fla_dir / "model.safetensors"))
    assert original.keys() == written.keys()
    for name, tensor in original.items():
        if "g_norm" not in name and "o_proj" not in name:  # the output norm's weight is folded into o_proj
            assert torch.equal(written[name], tensor), name
    cfg, src_cfg = (json.loads((d / "config.json").read_text()) for d in (fla_dir, FLA / "base"))
    for key in ("hidden_size", "num_heads", "num_hidden_layers", "expand_k", "expand_v", "vocab_size", "norm_eps"):
        assert cfg[key] == src_cfg[key], key
    assert (fla_dir / "tokenizer.json").read_bytes() == (FLA / "base" / "tokenizer.json").read_bytes()
    assert run_cli(capsys, "convert", "--from", "fla", fla_dir, again)[0] == 0
    a, b = load_file(str(ours / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_to_fla_refusals(capsys, tmp_path):
    ours = tmp_path / "ours"
    assert run_cli(capsys, "convert", "--from", "syncdoth", SYNCDOTH / "defaults", ours)[0] == 0
    check_user_error(capsys, ["convert", "--to", "fla", ours, tmp_path / "x"], "rotary_frequencies='retnet'", tmp_path)
    argv = ["convert", "--to", "fla", ours, tmp_path / "x", "--chunk-size", "8"]
    check_user_error(capsys, argv, "--chunk-size applies to --from only", ours)
    check_user_error(capsys, ["convert", "--to", "fla", tmp_path / "none", tmp_path / "x"], "does not exist", ours)
    check_user_error(capsys, ["convert", "--from", "fla", FLA / "base", ours], "--force", ours)


def test_checkpoint_without_weights_is_named(capsys, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(FLA / "base" / "config.json", source)
    check_user_error(capsys, ["convert", "--from", "fla", source, tmp_path / "m"], "no weights in", tmp_path)
