"""The model directory module: atomic writes, size-limited reads, and errors that name the file and field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from retnet.models import CheckpointError, ConfigError, RetNetConfig, RetNetForCausalLM
from retnet.models import directory as layout
from retnet.models.config import load_model_config
from tests.models.helpers import tiny_model


# ------------------------------------------------------------------------------------------ atomic writes
def test_atomic_write_replaces_the_file_and_syncs_the_folder(tmp_path, monkeypatch):
    synced: list[Path] = []
    monkeypatch.setattr(layout, "_fsync_dir", synced.append)
    target = tmp_path / "sub" / "f.json"
    layout.atomic_write_json(target, {"a": 1})
    layout.atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert synced == [target.parent, target.parent]
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        layout.atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# ------------------------------------------------------------------------------------------ bounded reads
def test_config_linked_to_dev_zero_is_refused_not_read(tmp_path):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this platform")
    (tmp_path / "config.json").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=r"config.json is not a regular file"):
        layout.read_config_json(tmp_path)


def test_huge_config_is_refused_by_size(tmp_path):
    path = tmp_path / "config.json"
    with open(path, "wb") as fh:
        fh.truncate(layout.MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match=r"config.json is too large"):
        layout.read_config_json(tmp_path)


def test_json_errors_name_the_file_and_position(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1,\n  oops}')
    with pytest.raises(CheckpointError, match=r"config file .*config.json is not valid JSON: .* line 2 column 3"):
        layout.read_config_json(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object, not list"):
        layout.read_config_json(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(CheckpointError, match="is not UTF-8 text"):
        layout.read_config_json(tmp_path)


def test_missing_file_is_both_a_checkpoint_error_and_file_not_found(tmp_path):
    with pytest.raises(CheckpointError, match="config file not found"):
        layout.read_config_json(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        layout.read_tokenizer(tmp_path)


def test_bad_tokenizer_file_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(CheckpointError, match=r"tokenizer.json is not a valid tokenizer file"):
        layout.read_tokenizer(tmp_path)


def test_check_model_dir_says_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        layout.check_model_dir(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a model directory .*model.safetensors missing"):
        layout.check_model_dir(tmp_path)
    with pytest.raises(CheckpointError, match="is a file, not a model directory"):
        layout.check_model_dir(tmp_path / "config.json")


# ------------------------------------------------------------------------------------------ config checks
def _model_dir_with_config(tmp_path: Path, **changes) -> Path:
    d = tmp_path / "m"
    tiny_model(dtype=torch.float32).save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))
    return d


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"hidden_size": -5}, "hidden_size must be a positive int"),
        ({"num_layers": 1_000_000}, "num_layers must be <= 10000"),
        ({"vocab_size": 1 << 30}, "vocab_size must be <= 16777216"),
        ({"vocab_size": 1 << 24, "hidden_size": 8192, "num_heads": 8, "value_dim": 64}, "vocab_size 16777216, hidden"),
        ({"rotary_base": 0}, "rotary_base must be a positive number"),
        ({"embed_scale": float("nan")}, "embed_scale must be a positive number"),
    ],
)
def test_impossible_config_is_refused_before_the_model_is_built(tmp_path, monkeypatch, changes, field):
    d = _model_dir_with_config(tmp_path, **changes)

    def never(*args, **kwargs):
        raise AssertionError("the model was built from an invalid config")

    monkeypatch.setattr(RetNetForCausalLM, "__init__", never)
    with pytest.raises(CheckpointError, match=rf"config.json: {field}"):
        RetNetForCausalLM.from_pretrained(d)


def test_load_model_config_allows_only_the_given_extra_keys(tmp_path):
    d = _model_dir_with_config(tmp_path, transformers_version="5.0")
    with pytest.raises(CheckpointError, match="unknown config field.*transformers_version"):
        load_model_config(d)
    assert load_model_config(d, frozenset({"transformers_version"})).hidden_size == 32


def test_config_save_is_atomic_json_that_loads_back(tmp_path):
    cfg = RetNetConfig.preset("tiny", rotary_base=500.0)
    cfg.save(tmp_path / "c.json")
    assert RetNetConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        RetNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_weights_are_checked_from_the_header_before_allocation(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    d = tmp_path / "m"
    tiny_model(dtype=torch.float32).save_pretrained(d)
    save_file({"x": torch.zeros(2)}, str(d / "model.safetensors"))
    monkeypatch.setattr(torch.nn.Module, "to_empty", lambda *a, **k: pytest.fail("allocated before the check"))
    with pytest.raises(CheckpointError, match="missing tensor"):
        RetNetForCausalLM.from_pretrained(d)
    os.remove(d / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors missing"):
        RetNetForCausalLM.from_pretrained(d)


def test_integer_weights_are_refused_and_other_float_precisions_announced(tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    tiny_model(dtype=torch.float32).save_pretrained(d)
    tensors = load_file(str(d / "model.safetensors"))
    name = "model.embed_tokens.weight"
    save_file({**tensors, name: tensors[name].to(torch.int64)}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor {name} is stored as I64, but the model's is float32"):
        RetNetForCausalLM.from_pretrained(d)
    save_file({k: v.half() for k, v in tensors.items()}, str(d / "model.safetensors"))
    with pytest.warns(UserWarning, match="weights stored as F16 are loaded as float32"):
        model = RetNetForCausalLM.from_pretrained(d)
    torch.testing.assert_close(model.model.embed_tokens.weight, tensors[name].half().float(), rtol=0, atol=0)


def test_a_save_removes_what_a_killed_save_left_and_nothing_else(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    dead = [d / ".model.safetensors.ab12cd34.tmp", d / ".config.json.x_y9z8w7.tmp"]
    keep = [d / ".notes.tmp", d / "model.safetensors.tmp", d / ".tokenizer.json.ab12cd34.tmp"]
    for path in dead + keep:
        path.write_text("x")
    (d / ".model.safetensors.linked123.tmp").symlink_to(tmp_path / "elsewhere")
    tiny_model(dtype=torch.float32).save_pretrained(d)
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in keep) and (d / ".model.safetensors.linked123.tmp").is_symlink()
    assert layout.remove_leftover_temp_files(d) == [d / ".tokenizer.json.ab12cd34.tmp"]
