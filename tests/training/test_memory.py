import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from retnet.models import PRESETS, RetNetConfig
from retnet.training.config import build_config
from retnet.training.errors import TrainError
from retnet.training.memory import check_fits, min_parameters


@pytest.mark.parametrize("name", list(PRESETS))
def test_floor_is_below_every_preset(name):
    config = RetNetConfig.preset(name)
    assert min_parameters(config.to_dict()) <= config.num_parameters()


@given(
    heads=st.integers(1, 4),
    head_dim=st.sampled_from([2, 4, 8]),
    layers=st.integers(1, 6),
    value_dim=st.integers(1, 8),
    ffn_dim=st.integers(1, 64),
    kind=st.sampled_from([{}, {"gated": True}, {"block_types": "A"}, {"architecture": "yoco"}]),
    tied=st.booleans(),
)
def test_floor_is_below_the_exact_count(heads, head_dim, layers, value_dim, ffn_dim, kind, tied):
    if kind.get("architecture") == "yoco":
        layers = max(layers, 2)
    if "block_types" in kind:
        kind = {"block_types": "A" * layers}
    shape = dict(hidden_size=heads * head_dim, num_heads=heads, num_layers=layers, ffn_dim=ffn_dim)
    config = RetNetConfig(vocab_size=50, value_dim=value_dim * heads, tie_word_embeddings=tied, **shape, **kind)
    assert min_parameters(config.to_dict()) <= config.num_parameters()


def test_bad_shapes_have_no_floor():
    assert min_parameters({"vocab_size": 256, "hidden_size": "big", "num_layers": 2, "ffn_dim": 8}) is None


def test_a_model_too_big_for_the_machine_is_refused_before_it_is_built():
    cfg = build_config("smoke", overrides={"model_overrides": {"num_layers": 10**12}})
    with pytest.raises(TrainError, match="num_layers 1000000000000"):
        check_fits(cfg, 256, torch.device("cpu"))


def test_the_smoke_run_fits():
    check_fits(build_config("smoke"), 256, torch.device("cpu"))
