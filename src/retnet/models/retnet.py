"""The RetNet language model, readable top to bottom: block, decoder stack, causal-LM head.

Pre-norm blocks ``x = x + MSR(RMSNorm(x))``, ``x = x + FFN(RMSNorm(x))``, a final RMSNorm and an output
projection. No positional embeddings: the rotation and the decay carry position. Every forward can take
and return a :class:`RetNetState`, so a prompt prefilled in parallel/chunkwise mode continues exactly in
recurrent decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from retnet.layers import (
    CausalSelfAttention,
    CrossAttention,
    GatedFFN,
    GatedRetention,
    KVCache,
    MultiScaleRetention,
    RetNetRotary,
    RMSNorm,
    SharedKV,
)
from retnet.models.config import RetNetConfig
from retnet.models.io import load_model, save_pretrained
from retnet.models.state import RetNetState
from retnet.ops import decay_weight_sum


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    state: RetNetState | None = None
    hidden_states: torch.Tensor | None = None


class RetNetBlock(nn.Module):
    """One pre-norm block: a token mixer (``kind``: retention, gated retention, attention, or YOCO's
    cross-attention) then the gated FFN. Submodule names follow the official code for retention blocks."""

    def __init__(self, config: RetNetConfig, kind: str | None = None) -> None:
        super().__init__()
        self.kind = kind or ("gated" if config.gated else "retention")
        kw = dict(
            head_norm=config.head_norm, norm_eps=config.norm_eps, decay=config.decay, chunk_size=config.chunk_size
        )
        if config.key_dim is not None:
            kw["key_dim"] = config.key_dim
        d, H = config.hidden_size, config.num_heads
        norm = RMSNorm(d, config.norm_eps)
        if self.kind == "gated":
            self.retention = GatedRetention(d, H, config.value_dim, gate_temperature=config.gate_temperature, **kw)
            self.retention_layer_norm = norm
        elif self.kind == "retention":
            self.retention = MultiScaleRetention(d, H, config.value_dim, **kw)
            self.retention_layer_norm = norm
        elif self.kind == "attention":
            self.attention = CausalSelfAttention(d, H, config.kv_heads, chunk_size=config.chunk_size)
            self.attention_layer_norm = norm
        elif self.kind == "cross":
            self.cross_attention = CrossAttention(d, H, chunk_size=config.chunk_size)
            self.cross_attention_layer_norm = norm
        else:
            raise ValueError(f"unknown layer kind {self.kind!r}")
        self.ffn = GatedFFN(config.hidden_size, config.ffn_dim, config.activation, config.dropout)
        self.final_layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def mixer(self) -> nn.Module:
        """The token mixer, whatever its kind."""
        return getattr(self, {"attention": "attention", "cross": "cross_attention"}.get(self.kind, "retention"))

    def forward(
        self,
        x,
        sin,
        cos,
        *,
        state=None,
        attention_mask=None,
        mode="auto",
        use_cache=False,
        shared: KVCache | None = None,
        q_start: int = 0,
        row_scale=None,
        backend: str = "auto",
        keep_last: int = 0,
    ):
        """``keep_last = n > 0``: only the last ``n`` positions of the output are needed (a prefill's last block):
        the state still covers every position, the FFN (and a retention mixer's gate and output projection) run on
        those ``n`` only, and the block returns ``[B, n, d]``."""
        if self.kind == "cross":
            if shared is None:
                raise ValueError("a cross-attention block needs the shared KV cache")
            h = self.cross_attention(
                self.cross_attention_layer_norm(x),
                sin,
                cos,
                shared=shared,
                q_start=q_start,
                attention_mask=attention_mask,
                mode=mode,
            )
            new_state = None
        else:
            norm = self.attention_layer_norm if self.kind == "attention" else self.retention_layer_norm
            extra = {"row_scale": row_scale} if row_scale is not None else {}  # torchscale's decay normalisation
            if self.kind != "attention":
                extra["backend"] = backend  # retention's backend (docs/retention.md, "Dispatch")
                extra["keep_last"] = keep_last
            h, new_state = self.mixer(
                norm(x), sin, cos, state=state, attention_mask=attention_mask, mode=mode, use_cache=use_cache, **extra
            )
        if 0 < keep_last < x.shape[1]:
            x = x[:, -keep_last:]
            h = h[:, -keep_last:]  # attention mixers return every position; retention ones only these
        x = x + self.dropout(h)
        x = x + self.dropout(self.ffn(self.final_layer_norm(x)))
        return x, new_state


DEFAULT_CHECKPOINT_SEGMENT = 1024


def _checkpoint_segments(
    run: Callable,
    layer: RetNetBlock,
    x: torch.Tensor,
    sin: torch.Tensor,
    cos: torch.Tensor,
    segment: int,
    *,
    state=None,
    attention_mask=None,
    row_scale=None,
    use_cache: bool = False,
    **kwargs,
):
    """A retention block under activation checkpointing, one checkpoint per ``segment`` tokens.

    Each segment starts from the state the previous one left (an explicit checkpoint input, so its gradient
    flows back to the previous segment), which is exact in every form (docs/retention.md). The backward pass then
    recomputes and frees one segment at a time: the recompute holds ``segment / T`` of the block's
    intermediates, where a whole-block checkpoint holds all of them. Attention blocks cannot do this (each query
    reads every earlier key), so they keep the whole-block checkpoint.
    """

    def segment_forward(x_s, sin_s, cos_s, state_s, mask_s, scale_s):
        return layer(
            x_s, sin_s, cos_s, state=state_s, attention_mask=mask_s, row_scale=scale_s, use_cache=True, **kwargs
        )

    outputs = []
    for start in range(0, x.shape[1], segment):
        part = slice(start, start + segment)
        y, state = run(
            segment_forward,
            x[:, part],
            sin[:, part],
            cos[:, part],
            state,
            None if attention_mask is None else attention_mask[:, part],
            None if row_scale is None else row_scale[:, part],
        )
        outputs.append(y)
    return torch.cat(outputs, 1), (state if use_cache else None)


class RetNetModel(nn.Module):
    """Embeddings, the stack of blocks and the final norm; returns hidden states and the new state.

    ``gradient_checkpointing = True`` (activation checkpointing) keeps only each block's input during a
    training forward and recomputes the block in the backward pass. The attribute names are the ones
    ``transformers``' ``gradient_checkpointing_enable`` sets, which may also replace the checkpoint function.
    Without dropout, retention blocks are checkpointed in segments of ``checkpoint_segment`` tokens (0: the whole
    sequence), each continuing from the previous segment's state, so the backward pass recomputes one segment at a time
    and holds that segment's intermediates only (docs/retention.md, "Activation checkpointing in segments").
    """

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func: Callable | None = None
        self.checkpoint_segment = DEFAULT_CHECKPOINT_SEGMENT
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # Optional RMSNorm on the (scaled) embeddings: torchscale's ``layernorm_embedding`` option.
        self.layernorm_embedding = RMSNorm(config.hidden_size, config.norm_eps) if config.layernorm_embedding else None
        self.layers = nn.ModuleList(RetNetBlock(config, kind) for kind in config.layer_kinds)
        # YOCO: the self-decoder's output becomes one KV cache read by every cross-attention layer.
        self.shared_kv = (
            SharedKV(config.hidden_size, config.num_heads, config.kv_heads, config.norm_eps)
            if config.architecture == "yoco"
            else None
        )
        self.layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.rotary = RetNetRotary(config.key_head_dim, config.rotary_base, config.rotary_frequencies)

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

    def _block(self, layer: RetNetBlock, x: torch.Tensor, sin, cos, keep_last: int = 0, **kwargs):
        """One block, under activation checkpointing when enabled for a training forward with gradients."""
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return layer(x, sin, cos, keep_last=keep_last, **kwargs)
        run = self._gradient_checkpointing_func or partial(checkpoint, use_reentrant=False)
        segment = self.checkpoint_segment
        # Segments draw other dropout masks than one whole pass would: with dropout, whole blocks.
        if layer.kind in ("retention", "gated") and 0 < segment < x.shape[1] and not self.config.dropout:
            y, state = _checkpoint_segments(run, layer, x, sin, cos, segment, **kwargs)
            return (y[:, -keep_last:] if keep_last else y), state
        return run(partial(layer.__call__, keep_last=keep_last, **kwargs), x, sin, cos)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        state: RetNetState | None = None,
        use_cache: bool = False,
        mode: str = "auto",
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        backend: str = "auto",
    ) -> tuple[torch.Tensor, RetNetState | None]:
        """Hidden states ``[B, T, d]`` and the new state. ``mode`` is the math form of every layer and
        ``backend`` the retention layers' implementation (:func:`retnet.ops.retention`).
        ``logits_to_keep = n > 0`` promises that only the last ``n`` positions are needed, and ``[B, n, d]`` is
        returned: the last block computes its FFN (and a retention block its gate and output projection) on those
        alone, and YOCO runs its cross-decoder on them alone (prefill skips the cross-decoder beyond filling the
        shared cache). The state covers every position either way."""
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
        kinds = self.config.layer_kinds
        n_self = self.config.num_self_layers
        # Only the last block's output reaches the logits (YOCO's self-decoder output also fills the shared cache).
        keep_last = logits_to_keep if 0 < logits_to_keep < T and self.shared_kv is None else 0
        for i in range(n_self):
            layer_state = state.layers[i] if state is not None else None
            x, s = self._block(
                self.layers[i],
                x,
                sin,
                cos,
                state=layer_state,
                attention_mask=attention_mask,
                mode=mode,
                use_cache=use_cache,
                row_scale=row_scale,
                backend=backend,
                keep_last=keep_last if i == n_self - 1 else 0,
            )
            new_layers.append(s)
        shared = None
        if self.shared_kv is not None:
            prev = state.shared if state is not None else None
            if state is not None and prev is None:
                raise ValueError("this YOCO model's state has no shared KV cache (state of another model?)")
            q_start = prev.length if prev is not None else 0
            shared = self.shared_kv(x, sin, cos, state=prev, attention_mask=attention_mask)
            q_mask = attention_mask
            if 0 < logits_to_keep < T:
                skip = T - logits_to_keep
                x, sin, cos, q_start = x[:, skip:], sin[:, skip:], cos[:, skip:], q_start + skip
                q_mask = None if attention_mask is None else attention_mask[:, skip:]
            for i in range(n_self, len(kinds)):
                x, _ = self._block(
                    self.layers[i], x, sin, cos, attention_mask=q_mask, mode=mode, shared=shared, q_start=q_start
                )
                new_layers.append(None)
        x = self.layer_norm(x)
        return x, (RetNetState(new_layers, new_offset, shared) if use_cache else None)


class RetNetForCausalLM(nn.Module):
    """RetNet with a language-modelling head. ``forward`` returns logits, the loss for ``labels``, the state."""

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.config = config
        self.model = RetNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the output projection when the config says so (again after
        ``to_empty``, which unshares them)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_parameters(self) -> None:
        """The official initialisation (embeddings and output projection normal with std d^-0.5)."""
        std = self.config.initializer_range or self.config.hidden_size**-0.5
        nn.init.normal_(self.model.embed_tokens.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        for layer in self.model.layers:
            layer.mixer.reset_parameters()
        if self.model.shared_kv is not None:
            self.model.shared_kv.reset_parameters()

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
        logits_to_keep: int = 0,
        backend: str = "auto",
    ) -> CausalLMOutput:
        """``logits_to_keep = n > 0``: logits of the last ``n`` positions only (generation's prefill needs
        one); YOCO then skips its cross-decoder on the other positions. Not allowed with ``labels``."""
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep cannot be combined with labels (the loss needs every position)")
        hidden, new_state = self.model(
            input_ids,
            attention_mask=attention_mask,
            state=state,
            use_cache=use_cache,
            mode=mode,
            logits_to_keep=logits_to_keep,
            backend=backend,
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
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
        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, *, map_location="cpu", dtype: torch.dtype | None = None) -> RetNetForCausalLM:
        return load_model(cls, directory, map_location=map_location, dtype=dtype)


def load_pretrained(directory, *, map_location="cpu", dtype: torch.dtype | None = None) -> RetNetForCausalLM:
    """Load a model directory written by ``save_pretrained`` (or ``retnet train`` / ``retnet convert``)."""
    return RetNetForCausalLM.from_pretrained(directory, map_location=map_location, dtype=dtype)
