"""Variant configs: layer patterns, validation errors naming the field, parameter counts, save/load."""

from __future__ import annotations

import pytest
import torch

from retnet import RetNetConfig, RetNetForCausalLM
from retnet.models import ConfigError
from tests.models.helpers import tiny_model


def test_layer_pattern_tiles_and_kinds():
    cfg = RetNetConfig(num_layers=8, block_types="rrra")
    assert cfg.block_types == ["retention"] * 3 + ["attention"] + ["retention"] * 3 + ["attention"]
    assert RetNetConfig(num_layers=4, gated=True).layer_kinds == ["gated"] * 4
    assert RetNetConfig(num_layers=4).layer_kinds == ["retention"] * 4
    assert RetNetConfig(num_layers=6, architecture="yoco").layer_kinds == ["gated"] * 3 + ["cross"] * 3
    assert RetNetConfig(num_layers=4, architecture="yoco", block_types="RA").layer_kinds == [
        "retention",
        "attention",
        "cross",
        "cross",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block_types="RGX"), "block_types pattern 'RGX' must use the letters R"),
        (dict(num_layers=6, block_types="RRRA"), r"does not tile num_layers = 6"),
        (dict(num_layers=2, block_types=["gated", "softmax"]), r"block_types\[1\] must be one of"),
        (dict(num_layers=3, block_types=["gated"]), "block_types has 1 entries but num_layers = 3"),
        (dict(num_layers=4, architecture="yoco", block_types="GGGG"), "the self-decoder's layers = 2"),
        (dict(gated=True, block_types="GA"), "give either gated or block_types"),
        (dict(architecture="mamba"), "architecture must be one of"),
        (dict(num_layers=1, architecture="yoco"), "yoco' needs num_layers >= 2"),
        (dict(num_kv_heads=3, num_heads=2), "num_heads 2 is not divisible by num_kv_heads 3"),
        (dict(num_kv_heads=0), "num_kv_heads must be a positive int"),
        (dict(block_types=7), "block_types must be a list"),
    ],
)
def test_bad_variant_configs_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RetNetConfig(**kwargs)


@pytest.mark.parametrize(
    "name", ["tiny-gated", "tiny-hybrid", "tiny-yoco", "small-gated", "small-hybrid", "small-yoco"]
)
def test_variant_presets_parameter_count_matches_model(name):
    cfg = RetNetConfig.preset(name)
    with torch.device("meta"):
        model = RetNetForCausalLM(cfg)
    assert model.num_parameters() == cfg.num_parameters()
    gqa = cfg.replace(num_kv_heads=1)
    with torch.device("meta"):
        model = RetNetForCausalLM(gqa)
    assert model.num_parameters() == gqa.num_parameters()


@pytest.mark.parametrize(
    "overrides",
    [dict(num_layers=4, block_types="GA", num_kv_heads=2), dict(num_layers=4, architecture="yoco")],
)
def test_save_load_round_trip(tmp_path, overrides):
    model = tiny_model(dtype=torch.float32, **overrides)
    model.save_pretrained(tmp_path / "m")
    loaded = RetNetForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    ids = torch.randint(0, 97, (2, 12))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert RetNetConfig.from_dict(model.config.to_dict()) == model.config
