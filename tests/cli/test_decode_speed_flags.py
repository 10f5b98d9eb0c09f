"""``--compile`` / ``--quantize``: one definition, parsed and checked with errors that name the flag."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from retnet.cli.errors import CLIError
from retnet.cli.flags import add_decode_speed_flags, quantize_from_flag
from tests.models.helpers import tiny_model


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retnet generate", exit_on_error=False)
    add_decode_speed_flags(p)
    return p


def test_defaults_and_values():
    assert vars(_parser().parse_args([])) == {"compile": False, "quantize": "none"}
    assert vars(_parser().parse_args(["--compile", "--quantize", "int8"])) == {"compile": True, "quantize": "int8"}
    with pytest.raises(argparse.ArgumentError, match="--quantize"):
        _parser().parse_args(["--quantize", "int4"])


def test_quantize_from_flag():
    model = tiny_model(dtype=torch.float32)
    assert quantize_from_flag(model, "none", "cpu") is model
    assert any(isinstance(m, nn.Linear) for m in model.modules())
    assert not any(isinstance(m, nn.Linear) for m in quantize_from_flag(model, "int8", "cpu").modules())
    with pytest.raises(CLIError, match="--quantize int8 runs on the CPU only"):
        quantize_from_flag(tiny_model(dtype=torch.float32), "int8", "cuda")
    with pytest.raises(CLIError, match="--quantize int8 needs a float32 model"):
        quantize_from_flag(tiny_model(), "int8", "cpu")
