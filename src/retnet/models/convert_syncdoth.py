"""Convert checkpoints of syncdoth/RetNet (the community Hugging Face port of torchscale's RetNet).

Its ``RetNetForCausalLM`` holds torchscale's decoder under ``model.`` (same tensor names, including the
``retnet_rel_pos.angle`` / ``decay`` buffers) plus ``lm_head``; its ``config.json`` records what a torchscale
state dict cannot (activation, embedding scale, norm eps). So the tensors go through
:mod:`retnet.models.convert_torchscale` once renamed, and the config fills in its options. Like torchscale it
normalises the decay matrix (reproduced with ``normalize_decay``) and divides retention scores by their absolute
row sums; both are positive per-row factors the head norm cancels, up to its eps.

Refused, naming the config field: the post-norm / DeepNet variants (``deepnorm``, ``decoder_normalize_before``),
the plain FFN with biases (``use_glu=false``), other activations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retnet.models.convert_common import ConversionError, ConversionReport, build_model, read_hf_checkpoint
from retnet.models.convert_torchscale import ANCHOR, convert_state_dict, infer_config

MODEL_TYPE = "retnet"
PREFIX, LM_HEAD = "model.", "lm_head.weight"
# syncdoth's RetNetConfig defaults for fields a config.json may leave out.
DEFAULTS: dict[str, Any] = {
    "activation_fn": "gelu",
    "no_scale_embedding": True,
    "layernorm_eps": 1e-6,
    "use_glu": True,
    "use_lm_decay": False,
    "layernorm_embedding": False,
    "deepnorm": False,
    "subln": True,
    "decoder_normalize_before": True,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 0,
}
ACTIVATIONS = ("swish", "gelu", "relu")


def _field(cfg: dict[str, Any], name: str) -> Any:
    return cfg.get(name, DEFAULTS[name])


def syncdoth_options(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """The :func:`~retnet.models.convert_torchscale.infer_config` options syncdoth's config records; refuses
    variants without an equivalent here."""
    if cfg.get("model_type") != MODEL_TYPE or "decoder_embed_dim" not in cfg:
        hint = " (fla's RetNet? use --from fla)" if "num_hidden_layers" in cfg else ""
        raise ConversionError(
            f"{source}: not a syncdoth/RetNet config (needs model_type 'retnet' and decoder_embed_dim){hint}"
        )
    # syncdoth's RetNetConfig: deepnorm turns pre-norm and subln off, subln then forces pre-norm.
    deepnorm, subln = bool(_field(cfg, "deepnorm")), bool(_field(cfg, "subln"))
    pre_norm = bool(_field(cfg, "decoder_normalize_before"))
    if deepnorm:
        pre_norm = subln = False
    if subln:
        pre_norm, deepnorm = True, False
    if deepnorm:
        raise ConversionError(f"{source}: unsupported deepnorm=true (post-norm DeepNet blocks)")
    if not pre_norm:
        raise ConversionError(f"{source}: unsupported decoder_normalize_before=false (post-norm blocks)")
    if not _field(cfg, "use_glu"):
        raise ConversionError(f"{source}: unsupported use_glu=false (the plain FFN with biases and sub-LayerNorm)")
    activation = _field(cfg, "activation_fn")
    if activation not in ACTIVATIONS:
        raise ConversionError(f"{source}: unsupported activation_fn={activation!r} (one of {ACTIVATIONS})")
    eps = _field(cfg, "layernorm_eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ConversionError(f"{source}: layernorm_eps must be a number >= 0, got {eps!r}")
    return {
        "activation": activation,
        "embed_scale": 1.0 if _field(cfg, "no_scale_embedding") else "sqrt",
        "norm_eps": float(eps),
        "normalize_decay": True,
    }


def torchscale_names(sd: dict[str, torch.Tensor], cfg: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The state dict with torchscale's decoder names: ``model.`` stripped, ``lm_head`` as ``output_projection``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key == LM_HEAD:
            out["output_projection.weight"] = tensor
        elif key.startswith(PREFIX):
            out[key[len(PREFIX) :]] = tensor
        else:
            raise ConversionError(f"{source}: unexpected tensor {key!r} (expected 'model.*' and {LM_HEAD!r})")
    if LM_HEAD not in sd and not _field(cfg, "tie_word_embeddings"):
        raise ConversionError(f"{source}: missing tensor {LM_HEAD!r} (tie_word_embeddings is false)")
    return out


def convert_syncdoth(
    cfg: dict[str, Any],
    sd: dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> tuple[Any, ConversionReport]:
    """A :class:`~retnet.models.RetNetForCausalLM` (eval mode) from syncdoth's ``config.json`` dict and state dict.
    ``overrides`` set further :class:`~retnet.models.RetNetConfig` fields (token ids, ``chunk_size``)."""
    options = syncdoth_options(cfg, source)
    ts = torchscale_names(sd, cfg, source)
    report = ConversionReport(prefix=PREFIX)
    tokens = {n: cfg.get(n, DEFAULTS.get(n)) for n in ("bos_token_id", "eos_token_id", "pad_token_id")}
    tokens = {k: v for k, v in tokens.items() if isinstance(v, int) and not isinstance(v, bool)}
    config = infer_config(ts, source=source, report=report, **options, **{**tokens, **overrides})
    recorded = {
        "vocab_size": config.vocab_size,
        "decoder_embed_dim": config.hidden_size,
        "decoder_value_embed_dim": config.value_dim,
        "decoder_ffn_embed_dim": config.ffn_dim,
        "decoder_layers": config.num_layers,
        "decoder_retention_heads": config.num_heads,
        "layernorm_embedding": config.layernorm_embedding,
        "use_lm_decay": report.decay == "paper",
    }
    for name, inferred in recorded.items():
        value = cfg.get(name, DEFAULTS.get(name))
        if value is not None and value != inferred:
            raise ConversionError(f"{source}: {name}={value!r} but the weights give {inferred!r} (see {ANCHOR!r})")
    return build_model(config, convert_state_dict(ts, config, dtype), source, dtype), report


def convert_syncdoth_directory(
    path: str | Path, *, dtype: torch.dtype = torch.float32, **overrides: Any
) -> tuple[Any, ConversionReport, dict[str, Any]]:
    """Read syncdoth's checkpoint directory ``path``, convert it; also return its ``config.json`` dict."""
    cfg, sd = read_hf_checkpoint(path)
    model, report = convert_syncdoth(cfg, sd, source=str(path), dtype=dtype, **overrides)
    return model, report, cfg
