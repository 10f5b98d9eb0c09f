"""The optimizer's parameter groups: weight decay on matrices only, every trainable parameter exactly once."""

from __future__ import annotations

from torch import nn

from retnet.models import RetNetConfig, RetNetForCausalLM
from retnet.training.optim import param_groups


def test_decay_on_matrices_only_and_every_trainable_parameter_once():
    model = RetNetForCausalLM(RetNetConfig.preset("tiny", vocab_size=64))
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decay["params"] and no_decay["params"]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)


def test_frozen_parameters_are_left_out():
    layer = nn.Linear(4, 3)
    layer.bias.requires_grad_(False)
    decay, no_decay = param_groups(layer, 0.5)
    assert decay["params"] == [layer.weight] and no_decay["params"] == []
