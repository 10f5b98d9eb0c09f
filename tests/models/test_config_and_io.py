"""Config validation, presets and parameter counts, save/load round trips and clear load errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from retnet import RetNetConfig, RetNetForCausalLM
from retnet.models import PRESETS, CheckpointError, ConfigError
from tests.models.helpers import tiny_model


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="hidden size 1280 is not divisible by 3 heads"):
        RetNetConfig(hidden_size=1280, num_heads=3, value_dim=1284)
    with pytest.raises(ConfigError, match="num_layers must be a positive int"):
        RetNetConfig(num_layers=0)
    with pytest.raises(ConfigError, match="activation must be one of"):
        RetNetConfig(activation="tanh")
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        RetNetConfig.preset("huge")
    with pytest.raises(ConfigError, match="unknown config field"):
        RetNetConfig.from_dict({"hidden_sise": 3})


@pytest.mark.parametrize("name", ["tiny", "small", "base", "medium"])
def test_preset_parameter_count_matches_model(name):
    cfg = RetNetConfig.preset(name)
    with torch.device("meta"):
        model = RetNetForCausalLM(cfg)
    assert model.num_parameters() == cfg.num_parameters()


def test_official_preset_shapes():
    assert set(PRESETS) >= {"base", "medium", "xl", "3b", "7b", "13b", "65b", "tiny", "small"}
    xl = RetNetConfig.preset("xl")
    assert (xl.hidden_size, xl.value_dim, xl.num_layers, xl.num_heads) == (2048, 3456, 24, 8)
    assert 1.0e6 <= RetNetConfig.preset("tiny").num_parameters() <= 3.0e6
    assert 20e6 <= RetNetConfig.preset("small").num_parameters() <= 40e6
    assert RetNetConfig(gated=True).num_parameters() == RetNetConfig().num_parameters() + 6 * 512 * 2


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_save_load_round_trip(tmp_path, tied, gated):
    model = tiny_model(dtype=torch.float32, tie_word_embeddings=tied, gated=gated)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = RetNetForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 97, (2, 12))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    if tied:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_load_errors_name_the_problem(tmp_path):
    model = tiny_model(dtype=torch.float32)
    d = tmp_path / "m"
    model.save_pretrained(d)
    with pytest.raises(CheckpointError, match="model directory .*nope. does not exist"):
        RetNetForCausalLM.from_pretrained(tmp_path / "nope")
    weights = load_file(str(d / "model.safetensors"))
    missing = dict(weights)
    del missing["model.layers.1.ffn.fc1.weight"]
    save_file(missing, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): model.layers.1.ffn.fc1.weight"):
        RetNetForCausalLM.from_pretrained(d)
    bad = dict(weights)
    bad["model.layers.0.retention.q_proj.weight"] = torch.zeros(3, 3)
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.layers.0.retention.q_proj.weight has shape \(3, 3\)"):
        RetNetForCausalLM.from_pretrained(d)
    save_file(weights, str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_heads": 5}))
    with pytest.raises(CheckpointError, match="config.json: hidden size 32 is not divisible by 5 heads"):
        RetNetForCausalLM.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        RetNetForCausalLM.from_pretrained(d)
    (d / "model.safetensors").write_bytes(b"garbage")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        RetNetForCausalLM.from_pretrained(d)
