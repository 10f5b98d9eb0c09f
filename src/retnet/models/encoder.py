"""Non-causal RetNet classifiers: a bidirectional-retention text encoder and a 2-D-retention vision model.

Both are pre-norm stacks of (retention, SwiGLU FFN) blocks like the LM, with mean pooling and a linear
classification head. Their configs are small dataclasses saved as ``config.json`` next to
``model.safetensors``, like the LM's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retnet.layers import BidirectionalRetention, GatedFFN, Retention2D, RetNetRotary, RMSNorm
from retnet.models.config import ConfigError
from retnet.models.directory import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_config_json
from retnet.models.io import load_weights, save_pretrained


@dataclass
class ClassifierOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


@dataclass
class EncoderConfig:
    """Shapes of a retention classifier. ``kind`` is ``"text"`` (bidirectional) or ``"vision"`` (2-D)."""

    kind: str = "text"
    num_labels: int = 2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    value_dim: int = 256
    ffn_dim: int = 256
    norm_eps: float = 1e-6
    dropout: float = 0.1
    chunk_size: int = 64
    vocab_size: int = 256  # text
    image_size: int = 8  # vision: square images
    patch_size: int = 1
    in_channels: int = 1
    decay_base: float = 2.0  # vision: gamma_h = 1 - decay_base^(-1 - h), steep enough for small grids

    def __post_init__(self) -> None:
        if self.kind not in ("text", "vision"):
            raise ConfigError(f"kind must be 'text' or 'vision', got {self.kind!r}")
        for name in ("num_labels", "hidden_size", "num_layers", "num_heads", "value_dim", "ffn_dim", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"hidden size {self.hidden_size} must split into {self.num_heads} heads of even size")
        if self.value_dim % self.num_heads:
            raise ConfigError(f"value_dim {self.value_dim} is not divisible by {self.num_heads} heads")
        if self.kind == "vision" and self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")

    @property
    def grid(self) -> tuple[int, int]:
        n = self.image_size // self.patch_size
        return (n, n)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "retnet-encoder", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        data = dict(data)
        if data.pop("model_type", "retnet-encoder") != "retnet-encoder":
            raise ConfigError("model_type must be 'retnet-encoder'")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)


class EncoderBlock(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        layer = BidirectionalRetention if config.kind == "text" else Retention2D
        self.retention = layer(
            config.hidden_size,
            config.num_heads,
            config.value_dim,
            norm_eps=config.norm_eps,
            chunk_size=config.chunk_size,
        )
        if config.kind == "vision":
            h = torch.arange(config.num_heads, dtype=torch.float64)
            self.retention.log_decay = torch.log1p(-(config.decay_base ** (-1.0 - h))).float()
        self.retention_layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.ffn = GatedFFN(config.hidden_size, config.ffn_dim, "swish", config.dropout)
        self.final_layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = x + self.dropout(self.retention(self.retention_layer_norm(x), *args, **kwargs))
        return x + self.dropout(self.ffn(self.final_layer_norm(x)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the time axis of ``[B, T, D]``, counting only tokens where ``mask`` is 1."""
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


class RetNetForSequenceClassification(nn.Module):
    """Bidirectional-retention encoder over token ids ``[B, T]`` -> class logits ``[B, num_labels]``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.kind != "text":
            raise ConfigError("RetNetForSequenceClassification needs kind='text'")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_layers))
        self.layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.rotary = RetNetRotary(config.hidden_size // config.num_heads)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        nn.init.normal_(self.embed_tokens.weight, std=config.hidden_size**-0.5)
        for layer in self.layers:
            layer.retention.reset_parameters()

    def forward(self, input_ids, *, attention_mask=None, labels=None, mode: str = "auto") -> ClassifierOutput:
        x = self.embed_tokens(input_ids)
        B, T = input_ids.shape
        if attention_mask is None:
            positions = torch.arange(T, device=x.device)[None].expand(B, -1)
        else:
            positions = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        sin, cos = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, sin, cos, attention_mask=attention_mask, mode=mode)
        logits = self.classifier(masked_mean(self.layer_norm(x), attention_mask))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ClassifierOutput(logits, loss)


class RetNetForImageClassification(nn.Module):
    """Patch embedding, 2-D retention blocks over the patch grid, mean pooling, class logits."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.kind != "vision":
            raise ConfigError("RetNetForImageClassification needs kind='vision'")
        self.config = config
        self.patch_embed = nn.Conv2d(config.in_channels, config.hidden_size, config.patch_size, config.patch_size)
        # Absolute positions (as in ViT): the Manhattan decay is symmetric, so without them the model is nearly
        # translation invariant after pooling.
        n = config.grid[0] * config.grid[1]
        self.embed_positions = nn.Parameter(torch.randn(1, n, config.hidden_size) * 0.02)
        self.layers = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_layers))
        self.layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        for layer in self.layers:
            layer.retention.reset_parameters()

    def forward(self, pixel_values, *, labels=None, mode: str = "parallel") -> ClassifierOutput:
        if pixel_values.dim() != 4 or pixel_values.shape[1:] != (
            self.config.in_channels,
            *(self.config.image_size,) * 2,
        ):
            c, s = self.config.in_channels, self.config.image_size
            raise ValueError(f"pixel_values must have shape [B, {c}, {s}, {s}], got {tuple(pixel_values.shape)}")
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2) + self.embed_positions  # [B, N, D], row-major
        for layer in self.layers:
            x = layer(x, self.config.grid, mode=mode)
        logits = self.classifier(self.layer_norm(x).mean(1))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ClassifierOutput(logits, loss)


def build_encoder(config: EncoderConfig) -> nn.Module:
    return (RetNetForSequenceClassification if config.kind == "text" else RetNetForImageClassification)(config)


def save_encoder(model: nn.Module, directory: str | Path) -> Path:
    """``config.json`` + ``model.safetensors`` for a classifier, written atomically."""
    return save_pretrained(model, directory)


def load_encoder(directory: str | Path) -> nn.Module:
    """Load a classifier saved by :func:`save_encoder`; errors name the file, field or tensor."""
    directory = Path(directory)
    return load_with_config(directory, read_config_json(directory), build_encoder)


def load_with_config(directory: Path, data: dict, build: Callable[[EncoderConfig], nn.Module]) -> nn.Module:
    """``build(EncoderConfig.from_dict(data))`` with ``directory/model.safetensors`` loaded into it, in eval
    mode (one loader for the retention encoders and the attention baselines)."""
    try:
        config = EncoderConfig.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from exc
    return load_weights(build(config), directory / WEIGHTS_FILE).eval()
