"""RetNet's rotation ("xPos" in the paper; the official code's plain rotary over adjacent pairs).

Angles ``theta_i = 1 / 10000^(i / (Dk/2 - 1))`` (a linspace from 0 to 1 in the exponent), each used for the
pair ``(2i, 2i+1)``; ``frequencies="rope"`` gives RoFormer's ``1 / 10000^(2i / Dk)`` instead (the schedule of
flash-linear-attention's RetNet, whose rotate-half layout is a permutation of the q/k channels). Computed in
float32 (float64 for float64 models) from integer positions, so positions stay distinct at any length whatever
the model dtype.
"""

from __future__ import annotations

import torch
from torch import nn

ROTARY_FREQUENCIES = ("retnet", "rope")


def retnet_angles(head_dim: int, base: float = 10000.0, frequencies: str = "retnet") -> torch.Tensor:
    """``[head_dim]`` angles, each pair's angle repeated twice (official ``RetNetRelPos.angle`` for
    ``frequencies="retnet"``; exponents ``2i / head_dim`` for ``"rope"``)."""
    if head_dim % 2:
        raise ValueError(f"key head dim must be even for the rotation, got {head_dim}")
    if frequencies == "retnet":
        exponents = torch.linspace(0, 1, head_dim // 2, dtype=torch.float64, device="cpu")
    elif frequencies == "rope":
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim
    else:
        raise ValueError(f"frequencies must be one of {ROTARY_FREQUENCIES}, got {frequencies!r}")
    return (1.0 / base**exponents).repeat_interleave(2)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """``out[2i] = -x[2i+1]``, ``out[2i+1] = x[2i]``."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class RetNetRotary(nn.Module):
    """Produces ``(sin, cos)`` of shape ``[B, T, Dk]`` for integer positions ``[B, T]``."""

    def __init__(self, head_dim: int, base: float = 10000.0, frequencies: str = "retnet") -> None:
        super().__init__()
        # A float64 constant, not a buffer: ``model.to(dtype)`` must not round the angles.
        self.angle = retnet_angles(head_dim, base, frequencies)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if self.angle.device != positions.device:
            self.angle = self.angle.to(positions.device)
        phase = positions.to(torch.float64)[..., None] * self.angle
        return torch.sin(phase).to(dtype), torch.cos(phase).to(dtype)


def rotation(sin: torch.Tensor, cos: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Each pair's rotation as one complex factor ``scale * (cos + i sin)``: ``[..., Dk / 2]`` from ``sin, cos:
    [..., Dk]`` (float32 gives complex64, float64 complex128)."""
    turn = torch.complex(cos[..., ::2], sin[..., ::2])
    return turn if scale == 1.0 else turn * scale


def rotate_pairs(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """``x: [..., Dk]`` rotated pair by pair as one complex product with ``turn`` (:func:`rotation`, broadcast
    against ``[..., Dk / 2]``); ``x`` has ``turn``'s real dtype."""
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(s % 2 for s in x.stride()[:-1]):
        x = x.contiguous()  # a complex view needs whole pairs, adjacent in memory
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * turn).flatten(-2)


def apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Rotates ``x: [B, T, H, Dk]`` by ``sin, cos: [B, T, Dk]`` and multiplies it by ``scale``; the result has
    the dtype of ``sin``. Float32/float64: one complex product per element pair (no rotated copy of ``x``),
    except under ``torch.compile``, whose inductor fuses the real formula and leaves complex products to
    separate ATen calls."""
    x = x.to(sin.dtype)
    if sin.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        return rotate_pairs(x, rotation(sin, cos, scale)[:, :, None])
    if scale != 1.0:
        x = x * scale
    return x * cos[:, :, None] + rotate_every_two(x) * sin[:, :, None]
