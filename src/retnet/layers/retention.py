"""Multi-scale retention (fixed per-head decay) and gated retention (data-dependent decay).

Both: ``q = x Wq``, ``k = x Wk * Dk^-0.5`` (only k is scaled), the RetNet rotation on q and k, retention via
:func:`retnet.ops.retention`, a per-head norm, the swish gate ``silu(x Wg) * y``, and ``out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retnet.layers.ffn import plain_linear
from retnet.layers.norm import HeadNorm
from retnet.layers.rotary import apply_rotary
from retnet.ops import official_log_decay, paper_log_decay, retention, retention_state
from retnet.ops.lean import fusable, gated_linear

DECAY_SCHEDULES = {"official": official_log_decay, "paper": paper_log_decay}


class MultiScaleRetention(nn.Module):
    """Retention with a fixed decay per head (RetNet). Input/output ``[B, T, hidden_size]``."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        value_dim: int,
        *,
        head_norm: str = "rms",
        norm_eps: float = 1e-6,
        decay: str = "official",
        chunk_size: int = 64,
        key_dim: int | None = None,
    ) -> None:
        """``key_dim``: the query/key width (default ``hidden_size``)."""
        super().__init__()
        key_dim = key_dim or hidden_size
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"key dim {key_dim} and value dim {value_dim} must be divisible by {num_heads} heads")
        if decay not in DECAY_SCHEDULES:
            raise ValueError(f"decay must be one of {sorted(DECAY_SCHEDULES)}, got {decay!r}")
        self.num_heads = num_heads
        self.key_dim = key_dim // num_heads
        self.head_dim = value_dim // num_heads
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.g_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.out_proj = nn.Linear(value_dim, hidden_size, bias=False)
        self.head_norm = HeadNorm(num_heads, self.head_dim, head_norm, norm_eps)
        # A float32 constant, not a buffer: ``model.to(torch.bfloat16)`` must not round the decays
        # (docs/retention.md, pitfalls).
        self.log_decay = DECAY_SCHEDULES[decay](num_heads)

    def reset_parameters(self) -> None:
        """The official initialisation: xavier-uniform, gain 2^-2.5 for q/k/v/g and 2^-1 for out."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.out_proj.weight, gain=2**-1)

    def decay(self, x: torch.Tensor) -> torch.Tensor:
        """Log decay: ``[H]`` here; ``[B, T, H]`` for gated retention."""
        if self.log_decay.device != x.device:
            self.log_decay = self.log_decay.to(x.device)
        return self.log_decay

    def forward(
        self,
        x: torch.Tensor,
        sin: torch.Tensor,
        cos: torch.Tensor,
        *,
        state: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mode: str = "auto",
        use_cache: bool = False,
        row_scale: torch.Tensor | None = None,
        backend: str = "auto",
        keep_last: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mode`` (the math form) and ``backend`` go to :func:`retnet.ops.retention` as they are.
        ``row_scale`` (``[B, T, H]``, optional) multiplies each head's output before the head norm.
        ``keep_last = n > 0``: only the last ``n`` outputs are needed; the state still covers every step (the steps
        before those ``n`` through :func:`retnet.ops.retention_state`: no queries, no outputs), the query and output
        projections, head norm and gate run on those ``n`` only, and the output is ``[B, n, hidden_size]``."""
        B, T, _ = x.shape
        H = self.num_heads
        k = apply_rotary(self.k_proj(x).view(B, T, H, self.key_dim), sin, cos, self.key_dim**-0.5)
        v = self.v_proj(x).view(B, T, H, self.head_dim)
        decay = self.decay(x)
        if 0 < keep_last < T:
            # The steps before the last keep_last only advance the state: no queries, no outputs for them.
            skip, T = T - keep_last, keep_last
            head_mask = None if attention_mask is None else attention_mask[:, :skip]
            gated = decay.dim() == 3
            state = retention_state(
                k[:, :skip],
                v[:, :skip],
                decay[:, :skip] if gated else decay,
                initial_state=state,
                attention_mask=head_mask,
            )
            x, sin, cos, k, v = (t[:, skip:] for t in (x, sin, cos, k, v))
            decay = decay[:, skip:] if gated else decay
            attention_mask = None if attention_mask is None else attention_mask[:, skip:]
            row_scale = None if row_scale is None else row_scale[:, skip:]
        q = apply_rotary(self.q_proj(x).view(B, T, H, self.key_dim), sin, cos)
        o, new_state = retention(
            q,
            k,
            v,
            decay,
            mode=mode,
            backend=backend,
            chunk_size=self.chunk_size,
            initial_state=state,
            output_final_state=use_cache,
            attention_mask=attention_mask,
        )
        if row_scale is not None:
            o = o * row_scale[..., None].to(o.dtype)
        gate = self.g_proj(x)
        if self.head_norm.kind == "rms" and plain_linear(self.out_proj) and fusable(o, gate, self.out_proj.weight):
            # Head norm, swish gate and output projection in one function: in training one node that keeps o and
            # the gate only, in inference one full-size temporary.
            o = o.reshape(B, T, H * self.head_dim)
            return gated_linear(gate, o, self.out_proj.weight, heads=H, eps=self.head_norm.eps), new_state
        o = self.head_norm(o).reshape(B, T, H * self.head_dim)
        return self.out_proj(F.silu(gate) * o), new_state


class GatedRetention(MultiScaleRetention):
    """Gated retention (gRet, YOCO): ``log gamma_t = logsigmoid(x_t W_gamma) / tau`` per head and token."""

    def __init__(
        self, hidden_size: int, num_heads: int, value_dim: int, *, gate_temperature: float = 16.0, **kw
    ) -> None:
        super().__init__(hidden_size, num_heads, value_dim, **kw)
        if gate_temperature <= 0:
            raise ValueError(f"gate_temperature must be > 0, got {gate_temperature}")
        self.gate_temperature = gate_temperature
        self.gt_proj = nn.Linear(hidden_size, num_heads, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.xavier_uniform_(self.gt_proj.weight, gain=2**-2.5)

    def decay(self, x: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(self.gt_proj(x).float()) / self.gate_temperature
