"""Gated feed-forward network: ``fc2(act(fc1 x) * gate x)``, no biases (SwiGLU with act = swish)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retnet.ops.lean import fusable, gated_linear


def plain_linear(module: nn.Module) -> bool:
    """Whether ``module`` is exactly a bias-free ``nn.Linear`` (not a quantized or adapter-wrapped one), so its
    weight may be applied by a fused function instead of calling it."""
    return type(module) is nn.Linear and module.bias is None


ACTIVATIONS = {"swish": F.silu, "silu": F.silu, "gelu": F.gelu, "relu": F.relu}


class GatedFFN(nn.Module):
    def __init__(self, hidden_size: int, ffn_dim: int, activation: str = "swish", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.act = ACTIVATIONS[activation]
        self.fc1 = nn.Linear(hidden_size, ffn_dim, bias=False)
        self.gate = nn.Linear(hidden_size, ffn_dim, bias=False)
        self.fc2 = nn.Linear(ffn_dim, hidden_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc1(x), self.gate(x)
        if plain_linear(self.fc2) and self.act is F.silu and not (self.training and self.dropout.p):
            if fusable(a, b, self.fc2.weight):  # training keeps fc1's and gate's outputs only, not their product
                return gated_linear(a, b, self.fc2.weight)
        return self.fc2(self.dropout(self.act(a) * b))
