"""Gated feed-forward network: ``fc2(act(fc1 x) * gate x)``, no biases (SwiGLU with act = swish)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
        return self.fc2(self.dropout(self.act(self.fc1(x)) * self.gate(x)))
