from __future__ import annotations

import torch

from retnet.models import RetNetConfig, RetNetForCausalLM


def tiny_model(dtype=torch.float64, seed=0, **overrides) -> RetNetForCausalLM:
    """A 2-layer model small enough for float64 equivalence tests."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, value_dim=48, ffn_dim=64, chunk_size=8)
    cfg.update(overrides)
    return RetNetForCausalLM(RetNetConfig(**cfg)).to(dtype).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
