"""The RetNet language model, readable top to bottom: block, decoder stack, causal-LM head.

Pre-norm blocks ``x = x + MSR(RMSNorm(x))``, ``x = x + FFN(RMSNorm(x))``, a final RMSNorm and an output
projection. No positional embeddings: the rotation and the decay carry position. Every forward can take
and return a :class:`RetNetState`, so a prompt prefilled in parallel/chunkwise mode continues exactly in
recurrent decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from retnet.layers import GatedFFN, GatedRetention, MultiScaleRetention, RetNetRotary, RMSNorm
from retnet.models.config import RetNetConfig
from retnet.models.state import RetNetState
from retnet.ops import decay_weight_sum


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    state: RetNetState | None = None
    hidden_states: torch.Tensor | None = None


class RetNetBlock(nn.Module):
    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        kw = dict(
            head_norm=config.head_norm, norm_eps=config.norm_eps, decay=config.decay, chunk_size=config.chunk_size
        )
        if config.gated:
            self.retention = GatedRetention(
                config.hidden_size, config.num_heads, config.value_dim, gate_temperature=config.gate_temperature, **kw
            )
        else:
            self.retention = MultiScaleRetention(config.hidden_size, config.num_heads, config.value_dim, **kw)
        self.retention_layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.ffn = GatedFFN(config.hidden_size, config.ffn_dim, config.activation, config.dropout)
        self.final_layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, sin, cos, *, state=None, attention_mask=None, mode="auto", use_cache=False, row_scale=None):
        h, new_state = self.retention(
            self.retention_layer_norm(x),
            sin,
            cos,
            state=state,
            attention_mask=attention_mask,
            mode=mode,
            use_cache=use_cache,
            row_scale=row_scale,
        )
        x = x + self.dropout(h)
        x = x + self.dropout(self.ffn(self.final_layer_norm(x)))
        return x, new_state


class RetNetModel(nn.Module):
    """Embeddings, the stack of blocks and the final norm; returns hidden states and the new state."""

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # Optional RMSNorm on the (scaled) embeddings: torchscale's ``layernorm_embedding`` option.
        self.layernorm_embedding = RMSNorm(config.hidden_size, config.norm_eps) if config.layernorm_embedding else None
        self.layers = nn.ModuleList(RetNetBlock(config) for _ in range(config.num_layers))
        self.layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.rotary = RetNetRotary(config.key_head_dim, config.rotary_base)

    def positions(
        self, batch_size: int, seq_len: int, device, state: RetNetState | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation positions ``[B, T]`` (padding skipped) and the offsets after this call."""
        offset = state.offset if state is not None else torch.zeros(batch_size, dtype=torch.long, device=device)
        if attention_mask is None:
            steps = torch.arange(seq_len, device=device)[None].expand(batch_size, -1)
            return offset[:, None] + steps, offset + seq_len
        seen = attention_mask.long().cumsum(1)
        return offset[:, None] + (seen - 1).clamp_min(0), offset + seen[:, -1]

    def decay_row_scale(self, positions: torch.Tensor) -> torch.Tensor:
        """``[B, T, H]`` factors ``1 / sqrt(sum_{i<=n} gamma^i)`` at position n (``normalize_decay``).

        torchscale divides the decay matrix rows (parallel) and the state (recurrent) by these; a positive
        per-head factor that only matters through the head norm's eps, reproduced to match its checkpoints.
        """
        log_decay = self.layers[0].retention.decay(positions)  # fixed decay [H], on the positions' device
        return decay_weight_sum(log_decay, positions + 1).rsqrt()

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        state: RetNetState | None = None,
        use_cache: bool = False,
        mode: str = "auto",
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RetNetState | None]:
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.embed_scale != 1.0:
            x = x * self.config.embed_scale
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        B, T = x.shape[:2]
        if state is not None and state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} rows but input_ids has batch size {B}")
        if attention_mask is not None and attention_mask.shape != (B, T):
            raise ValueError(f"attention_mask must have shape [B, T] = [{B}, {T}], got {tuple(attention_mask.shape)}")
        positions, new_offset = self.positions(B, T, x.device, state, attention_mask)
        sin, cos = self.rotary(positions, x.dtype)
        row_scale = self.decay_row_scale(positions) if self.config.normalize_decay else None
        new_layers = []
        for i, layer in enumerate(self.layers):
            layer_state = state.layers[i] if state is not None else None
            x, s = layer(
                x,
                sin,
                cos,
                state=layer_state,
                attention_mask=attention_mask,
                mode=mode,
                use_cache=use_cache,
                row_scale=row_scale,
            )
            new_layers.append(s)
        x = self.layer_norm(x)
        return x, (RetNetState(new_layers, new_offset) if use_cache else None)


class RetNetForCausalLM(nn.Module):
    """RetNet with a language-modelling head. ``forward`` returns logits, the loss for ``labels``, the state."""

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.config = config
        self.model = RetNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_parameters(self) -> None:
        """The official initialisation (embeddings and output projection normal with std d^-0.5)."""
        std = self.config.initializer_range or self.config.hidden_size**-0.5
        nn.init.normal_(self.model.embed_tokens.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        for layer in self.model.layers:
            layer.retention.reset_parameters()

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        state: RetNetState | None = None,
        use_cache: bool = False,
        mode: str = "auto",
        output_hidden_states: bool = False,
    ) -> CausalLMOutput:
        hidden, new_state = self.model(
            input_ids, attention_mask=attention_mask, state=state, use_cache=use_cache, mode=mode
        )
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            if attention_mask is not None:
                labels = labels.masked_fill(attention_mask == 0, -100)
            shifted = logits[:, :-1]
            if shifted.dtype in (torch.float16, torch.bfloat16):
                shifted = shifted.float()
            loss = F.cross_entropy(shifted.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(
            logits=logits, loss=loss, state=new_state, hidden_states=hidden if output_hidden_states else None
        )

    # Saving and loading live in retnet.models.io; these are thin conveniences.
    def save_pretrained(self, directory) -> None:
        from retnet.models.io import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, *, map_location="cpu", dtype: torch.dtype | None = None) -> RetNetForCausalLM:
        from retnet.models.io import load_pretrained

        return load_pretrained(directory, map_location=map_location, dtype=dtype)
