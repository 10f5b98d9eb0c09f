"""Building microsoft/torchscale 0.3.0's ``RetNetDecoder`` for comparisons (needs torchscale and fairscale).

torchscale imports one function from ``timm`` (``drop_path``, used only with ``drop_path_rate > 0``); timm is
not installed, so a stand-in module providing it is registered before torchscale is imported.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch


def _drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= drop_prob
    return x * keep / (1 - drop_prob)


def install_fake_timm() -> None:
    """Register ``timm.models.layers.drop_path`` unless a real timm is importable."""
    if "timm.models.layers" in sys.modules:
        return
    timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
    layers.drop_path = _drop_path
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def build_torchscale_decoder(vocab_size: int, **kwargs: Any) -> torch.nn.Module:
    """A torchscale ``RetNetDecoder`` in eval mode with its own ``nn.Embedding``; ``kwargs`` go to its config."""
    install_fake_timm()
    from torchscale.architecture.config import RetNetConfig as TSConfig
    from torchscale.architecture.retnet import RetNetDecoder

    args = TSConfig(vocab_size=vocab_size, **kwargs)
    embed = torch.nn.Embedding(vocab_size, args.decoder_embed_dim)
    return RetNetDecoder(args, embed_tokens=embed).eval()


def torchscale_recurrent_logits(decoder: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, V]`` from torchscale's recurrent path, one token at a time."""
    state: dict = {}
    steps = [decoder(ids[:, : t + 1], incremental_state=state)[0] for t in range(ids.shape[1])]
    return torch.cat(steps, dim=1)
