"""Convert a state dict of microsoft/torchscale 0.3.0's ``RetNetDecoder`` into a :class:`RetNetForCausalLM`.

The state dict fixes every shape: vocabulary and width from ``embed_tokens.weight``, the head count from the
``retnet_rel_pos.decay`` buffer (and which decay schedule from its values), the key head dim and rotation base
from ``retnet_rel_pos.angle``, value/FFN widths and depth from the layer tensors, ``layernorm_embedding`` and
tied embeddings from which tensors are present. What it cannot tell (FFN activation, embedding scale, norm
eps) comes from the caller; the defaults are those of torchscale's ``RetNetDecoder`` with ``activation_fn=
"swish"``. Semantic differences to torchscale, all harmless for converted weights, are listed in the README.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from retnet.layers.rotary import retnet_angles
from retnet.models.config import RetNetConfig
from retnet.models.convert_common import (
    ConversionError,
    ConversionReport,
    build_model,
    check_no_unexpected,
    check_shape,
    load_checkpoint,
    make_config,
    need,
)
from retnet.ops import official_log_decay, paper_log_decay

__all__ = [
    "ConversionError",
    "ConversionReport",
    "convert_checkpoint",
    "convert_state_dict",
    "convert_torchscale",
    "find_state_dict",
    "infer_config",
    "load_checkpoint",
]

NESTED_KEYS = ("model", "state_dict", "module", "model_state_dict")
ANCHOR = "embed_tokens.weight"
ANGLE, DECAY = "retnet_rel_pos.angle", "retnet_rel_pos.decay"
# fairseq bookkeeping tensors that carry no weights.
IGNORED = ("version", "_float_tensor")
LAYER_TENSORS = (
    "retention.q_proj.weight",
    "retention.k_proj.weight",
    "retention.v_proj.weight",
    "retention.g_proj.weight",
    "retention.out_proj.weight",
    "retention_layer_norm.weight",
    "ffn.fc1.weight",
    "ffn.gate.weight",
    "ffn.fc2.weight",
    "final_layer_norm.weight",
)
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")


# ---------------------------------------------------------------------------------------------- reading
def find_state_dict(obj: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The decoder's tensors with their official names, from a bare or nested state dict.

    Looks at the top level, then under the keys ``NESTED_KEYS``; in each, for a key ending in
    ``embed_tokens.weight`` whose prefix (e.g. ``decoder.`` in fairseq checkpoints) is then stripped.
    """
    candidates: list[tuple[str | None, Any]] = [(None, obj)]
    if isinstance(obj, dict):
        candidates += [(k, obj[k]) for k in NESTED_KEYS if isinstance(obj.get(k), dict)]
    for nested, cand in candidates:
        if not isinstance(cand, dict):
            continue
        anchors = sorted(
            (k for k in cand if isinstance(k, str) and k.endswith(ANCHOR) and torch.is_tensor(cand[k])), key=len
        )
        anchors = [k for k in anchors if k == ANCHOR or k.endswith("." + ANCHOR)]
        if not anchors:
            continue
        prefix = anchors[0][: -len(ANCHOR)]
        tensors: dict[str, torch.Tensor] = {}
        for key, value in cand.items():
            if not (isinstance(key, str) and key.startswith(prefix)):
                continue
            name = key[len(prefix) :]
            if name in IGNORED:
                continue
            if not torch.is_tensor(value):
                raise ConversionError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
            tensors[name] = value
        return tensors, ConversionReport(prefix=prefix, nested_key=nested)
    tried = ["the top level"] + [f"key {k!r}" for k in NESTED_KEYS]
    top = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ConversionError(
        f"{source}: no torchscale RetNetDecoder state dict found: looked for a tensor named '{ANCHOR}' (any prefix, "
        f"e.g. 'decoder.') at {', '.join(tried)}; the file holds {top}"
    )


# ---------------------------------------------------------------------------------------------- inference
def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """Equal up to rounding to ``dtype`` (the buffer may have been cast to half precision with the model)."""
    rtol = max(1e-5, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-5
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=1e-6))


def infer_decay(decay: torch.Tensor, source: str) -> str:
    """``"official"`` or ``"paper"``: which schedule the log decays ``[H]`` follow."""
    H = decay.shape[0]
    for name, fn in (("official", official_log_decay), ("paper", paper_log_decay)):
        if _close(decay, fn(H, dtype=torch.float64), decay.dtype):
            return name
    raise ConversionError(
        f"{source}: tensor {DECAY!r} = {decay.double().tolist()} follows neither the official schedule "
        f"log(1 - 2^(-5-h)) nor the paper's; only those two are supported"
    )


def infer_rotary_base(angle: torch.Tensor, source: str) -> float:
    """The rotation base of ``angle = 1 / base^linspace(0, 1, Dk/2)`` (each repeated for a pair)."""
    Dk = angle.shape[0]
    base = 10000.0
    if Dk >= 4:
        base = float(1.0 / angle[-1].double())
        if abs(base - round(base)) <= 1e-3 * base:
            base = float(round(base))
    if not _close(angle, retnet_angles(Dk, base), angle.dtype):
        raise ConversionError(
            f"{source}: tensor {ANGLE!r} does not follow RetNet's rotation 1/base^linspace(0, 1, Dk/2) with pairs "
            f"repeated (got {angle[:6].tolist()} ...)"
        )
    return base


def infer_config(
    sd: dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    activation: str = "swish",
    embed_scale: float | str = 1.0,
    norm_eps: float = 1e-6,
    num_heads: int | None = None,
    normalize_decay: bool = True,
    report: ConversionReport | None = None,
    **overrides: Any,
) -> RetNetConfig:
    """A :class:`RetNetConfig` for the official state dict ``sd``; checks every tensor's shape.

    ``embed_scale`` is a number or ``"sqrt"`` (``sqrt(hidden_size)``, torchscale's ``no_scale_embedding=False``).
    ``normalize_decay`` (default on) reproduces torchscale's decay normalisation, which matters only through the
    norm eps (see :meth:`retnet.models.RetNetModel.decay_row_scale`). ``num_heads`` is only used (and then
    required) when the checkpoint lacks the ``retnet_rel_pos.decay`` buffer.
    """
    report = report if report is not None else ConversionReport()
    embed = need(sd, ANCHOR, source)
    if embed.dim() != 2:
        raise ConversionError(f"{source}: tensor {ANCHOR!r} must be 2-D [vocab, hidden], got {tuple(embed.shape)}")
    V, d = embed.shape
    unsupported = sorted(k for k in sd if k.endswith(".bias") or ".A." in k or ".B." in k or "moe_layer" in k)
    if unsupported:
        raise ConversionError(
            f"{source}: unsupported tensor(s) {', '.join(unsupported[:4])}: biases/LayerNorm (pre-0.3.0 snapshots), "
            "multiway or MoE layers are not part of torchscale 0.3.0's dense RetNetDecoder"
        )
    if DECAY in sd:
        decay = sd[DECAY]
        if decay.dim() != 1:
            raise ConversionError(f"{source}: tensor {DECAY!r} must be 1-D [heads], got {tuple(decay.shape)}")
        H = decay.shape[0]
        if num_heads is not None and num_heads != H:
            raise ConversionError(f"{source}: num_heads={num_heads} but tensor {DECAY!r} has {H} heads")
        report.decay = infer_decay(decay, source)
    elif num_heads is None:
        raise ConversionError(f"{source}: missing tensor {DECAY!r}, which gives the head count; pass num_heads")
    else:
        H = num_heads
        report.notes.append(f"no {DECAY} buffer: assumed the official decay schedule for {H} heads")
    if d % H:
        raise ConversionError(f"{source}: hidden size {d} (from {ANCHOR!r}) is not divisible by {H} heads")
    Dk = d // H
    rotary_base = 10000.0
    if ANGLE in sd:
        check_shape(sd, ANGLE, (Dk,), source, f"key head dim = hidden {d} / {H} heads")
        rotary_base = infer_rotary_base(sd[ANGLE], source)
    else:
        report.notes.append(f"no {ANGLE} buffer: assumed rotation base 10000")

    layer_ids = sorted({int(m.group(1)) for k in sd if (m := _LAYER_RE.match(k))})
    if not layer_ids:
        raise ConversionError(f"{source}: no tensors named 'layers.<i>.*'")
    if layer_ids != list(range(len(layer_ids))):
        missing = sorted(set(range(layer_ids[-1] + 1)) - set(layer_ids))
        raise ConversionError(f"{source}: layer(s) {missing} missing (found layers {layer_ids[0]}..{layer_ids[-1]})")
    L = len(layer_ids)
    dv = need(sd, "layers.0.retention.v_proj.weight", source).shape[0]
    f = need(sd, "layers.0.ffn.fc1.weight", source).shape[0]
    expected = {
        "retention.q_proj.weight": (d, d),
        "retention.k_proj.weight": (d, d),
        "retention.v_proj.weight": (dv, d),
        "retention.g_proj.weight": (dv, d),
        "retention.out_proj.weight": (d, dv),
        "retention_layer_norm.weight": (d,),
        "ffn.fc1.weight": (f, d),
        "ffn.gate.weight": (f, d),
        "ffn.fc2.weight": (d, f),
        "final_layer_norm.weight": (d,),
    }
    why = f"hidden {d}, value dim {dv}, ffn dim {f}"
    for i in range(L):
        for suffix, shape in expected.items():
            check_shape(sd, f"layers.{i}.{suffix}", shape, source, why)
    need(sd, "layer_norm.weight", source, "torchscale's deepnorm / post-norm variant has no final norm; unsupported")
    check_shape(sd, "layer_norm.weight", (d,), source, why)
    layernorm_embedding = "layernorm_embedding.weight" in sd
    if layernorm_embedding:
        check_shape(sd, "layernorm_embedding.weight", (d,), source, why)
    out = sd.get("output_projection.weight")
    if out is None:
        report.tied = True
        report.notes.append("no output_projection.weight: tied to embed_tokens.weight")
    else:
        check_shape(sd, "output_projection.weight", (V, d), source, f"vocab {V} and hidden {d} from {ANCHOR!r}")
        report.tied = out is embed or torch.equal(out, embed)
    known = {ANCHOR, ANGLE, DECAY, "layer_norm.weight", "layernorm_embedding.weight", "output_projection.weight"}
    known |= {f"layers.{i}.{s}" for i in range(L) for s in LAYER_TENSORS}
    check_no_unexpected(sd, known, source)
    if embed_scale == "sqrt":
        embed_scale = math.sqrt(d)
    return make_config(
        source,
        vocab_size=V,
        hidden_size=d,
        num_layers=L,
        num_heads=H,
        value_dim=dv,
        ffn_dim=f,
        activation=activation,
        head_norm="rms",
        norm_eps=norm_eps,
        decay=report.decay,
        tie_word_embeddings=report.tied,
        embed_scale=float(embed_scale),
        layernorm_embedding=layernorm_embedding,
        normalize_decay=normalize_decay,
        rotary_base=rotary_base,
        **overrides,
    )


# ---------------------------------------------------------------------------------------------- mapping
def official_to_ours(name: str) -> str | None:
    """Our parameter name for an official tensor name (``None``: a buffer we recompute)."""
    if name in (ANGLE, DECAY):
        return None
    if name == "output_projection.weight":
        return "lm_head.weight"
    return "model." + name


def convert_state_dict(
    sd: dict[str, torch.Tensor], config: RetNetConfig, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Our state dict (tied weights stored once, as :func:`retnet.models.io.save_pretrained` writes it)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        ours = official_to_ours(name)
        if ours is None or (ours == "lm_head.weight" and config.tie_word_embeddings):
            continue
        out[ours] = tensor.detach().to(dtype).contiguous()
    return out


def convert_torchscale(
    obj: Any, *, source: str = "checkpoint", dtype: torch.dtype = torch.float32, **options: Any
) -> tuple[Any, ConversionReport]:
    """A :class:`RetNetForCausalLM` (eval mode) from a loaded torchscale checkpoint object; see :func:`infer_config`."""
    sd, report = find_state_dict(obj, source)
    config = infer_config(sd, source=source, report=report, **options)
    return build_model(config, convert_state_dict(sd, config, dtype), source, dtype), report


def convert_checkpoint(
    path: str | Path, out_dir: str | Path | None = None, **options: Any
) -> tuple[Any, ConversionReport]:
    """Load the torchscale checkpoint ``path``, convert it, and (if ``out_dir``) save our model directory."""
    model, report = convert_torchscale(load_checkpoint(path), source=str(path), **options)
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model, report
