"""Softmax-attention baselines for the classifiers, built from ``torch.nn.TransformerEncoder``.

Same width, depth, heads and pooling as the retention classifiers; learned position embeddings; FFN width
chosen so the parameter counts match (see :func:`matched_ffn_dim`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retnet.models.encoder import ClassifierOutput, EncoderConfig, masked_mean


def matched_ffn_dim(config: EncoderConfig, extra_params: int = 0) -> int:
    """FFN width that makes the baseline's parameter count match the retention model's.

    ``extra_params`` are parameters the baseline has and the retention model lacks (position embeddings);
    they come out of the FFN budget.
    """
    d, dv, f = config.hidden_size, config.value_dim, config.ffn_dim
    retention_block = 2 * d * d + 3 * d * dv + 3 * d * f + 2 * d - extra_params / config.num_layers
    # TransformerEncoderLayer: in_proj 3d^2+3d, out_proj d^2+d, linear1 d*f'+f', linear2 f'*d+d, 2 LayerNorms 4d.
    attention = 4 * d * d + 4 * d + 4 * d + d
    return max(1, round((retention_block - attention) / (2 * d + 1)))


def _encoder(config: EncoderConfig, extra_params: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        config.hidden_size,
        config.num_heads,
        dim_feedforward=matched_ffn_dim(config, extra_params),
        dropout=config.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)


class TransformerTextClassifier(nn.Module):
    def __init__(self, config: EncoderConfig, max_len: int = 512) -> None:
        super().__init__()
        self.config, self.max_len = config, max_len
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(max_len, config.hidden_size)
        self.encoder = _encoder(config, max_len * config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, *, attention_mask=None, labels=None, **_) -> ClassifierOutput:
        T = input_ids.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds the baseline's max_len {self.max_len}")
        x = self.embed_tokens(input_ids) + self.embed_positions(torch.arange(T, device=input_ids.device))
        pad = None if attention_mask is None else attention_mask == 0
        x = self.encoder(x, src_key_padding_mask=pad)
        logits = self.classifier(masked_mean(self.layer_norm(x), attention_mask))
        return ClassifierOutput(logits, F.cross_entropy(logits.float(), labels) if labels is not None else None)


class ViTClassifier(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        n = config.grid[0] * config.grid[1]
        self.patch_embed = nn.Conv2d(config.in_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.embed_positions = nn.Parameter(torch.randn(1, n, config.hidden_size) * 0.02)
        self.encoder = _encoder(config, 0)  # the retention vision model has the same position table
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pixel_values, *, labels=None, **_) -> ClassifierOutput:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2) + self.embed_positions
        logits = self.classifier(self.layer_norm(self.encoder(x)).mean(1))
        return ClassifierOutput(logits, F.cross_entropy(logits.float(), labels) if labels is not None else None)
