"""Convert flash-linear-attention's RetNet (``fla.models.retnet``, Hugging Face format) to and from our model.

fla's ``MultiScaleRetention`` is our retention up to re-parametrisations that leave every output unchanged:

* rotation: fla rotates the halves of each head (GPT-NeoX layout) with RoFormer frequencies ``base^(-2i/Dk)``;
  we rotate adjacent pairs. Reordering the q/k projection rows of each head (fla channel ``i`` -> ours ``2i``,
  ``i + Dk/2`` -> ``2i + 1``) maps one onto the other; dot products and hence retention are unchanged. The
  frequencies are the config option ``rotary_frequencies="rope"``.
* grouped keys/values (``num_kv_heads``): fla repeats each k/v head for its group of query heads before
  retention, so its recurrent state already has one matrix per query head; we repeat the projection rows.
* the gated output norm ``RMSNorm(o) * w * swish(g)`` has one affine weight ``w [Dv]`` shared by the heads; it
  is folded into the output projection's columns (the norm itself is our parameter-free RMS head norm).
* ``expand_k != 1`` is the config option ``key_dim``; the decay schedule (``1 - 2^(-5-h)``), the key scaling
  ``Dk^-0.5``, the affine RMSNorms and the SwiGLU MLP (gate/up/down = our fc1/gate/fc2) match directly.

Options fla's ``RetNetForCausalLM`` accepts that change the function beyond this (hybrid attention layers,
feature maps, no output gate, other activations, attention residuals) are refused naming the config field.
fla's ``RetNetBlock`` never builds the short convolution its config has a field for, so ``use_short_conv`` is
ignored there and here alike. The reverse direction writes a directory fla's own ``RetNetForCausalLM`` loads.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from retnet.models.config import RetNetConfig
from retnet.models.convert_common import (
    ConversionError,
    ConversionReport,
    build_model,
    check_no_unexpected,
    check_shape,
    make_config,
    need,
    read_hf_checkpoint,
)

MODEL_TYPE = "retnet"
ARCHITECTURE = "RetNetForCausalLM"
EMBED, FINAL_NORM, LM_HEAD = "model.embeddings.weight", "model.norm.weight", "lm_head.weight"
G_NORM_NAMES = ("attn.g_norm_swish_gate.weight", "attn.g_norm.weight")  # fuse_norm=True / False
# fla's config defaults (fla.models.retnet.RetNetConfig) for fields a config.json may leave out.
DEFAULTS: dict[str, Any] = {
    "hidden_size": 2048,
    "expand_k": 1.0,
    "expand_v": 2.0,
    "hidden_ratio": 2,
    "intermediate_size": None,
    "num_hidden_layers": 24,
    "num_heads": 8,
    "num_kv_heads": None,
    "feature_map": None,
    "hidden_act": "swish",
    "use_short_conv": False,
    "use_output_gate": True,
    "elementwise_affine": True,
    "norm_eps": 1e-6,
    "attn": None,
    "attnres_block_size": None,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
}
# (field, value fla's RetNet needs for our model to be exact, what else would mean).
REQUIRED: tuple[tuple[str, Any, str], ...] = (
    ("attn", None, "hybrid softmax-attention layers are not supported"),
    ("attnres_block_size", None, "attention residuals are not supported"),
    ("feature_map", None, "a feature map on queries/keys is not supported"),
    ("use_output_gate", True, "retention without the swish output gate is not supported"),
    ("hidden_act", "swish", "only the swish output gate and SwiGLU MLP are supported"),
)
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
LAYER_TENSORS = (
    "attn_norm.weight",
    "attn.q_proj.weight",
    "attn.k_proj.weight",
    "attn.v_proj.weight",
    "attn.g_proj.weight",
    "attn.o_proj.weight",
    "mlp_norm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
# fla name -> ours, for the tensors that map one to one.
RENAMES = {
    "attn_norm.weight": "retention_layer_norm.weight",
    "attn.g_proj.weight": "retention.g_proj.weight",
    "mlp_norm.weight": "final_layer_norm.weight",
    "mlp.gate_proj.weight": "ffn.fc1.weight",
    "mlp.up_proj.weight": "ffn.gate.weight",
    "mlp.down_proj.weight": "ffn.fc2.weight",
}


# ---------------------------------------------------------------------------------------------- permutations
def half_to_pairs(head_dim: int) -> torch.Tensor:
    """Indices ``p`` with ``ours = fla[p]`` per head: ``[0, D/2, 1, D/2+1, ...]`` (rotate-half -> adjacent pairs)."""
    half = torch.arange(head_dim // 2)
    return torch.stack((half, half + head_dim // 2), dim=1).flatten()


def _permute_heads(weight: torch.Tensor, head_dim: int, index: torch.Tensor) -> torch.Tensor:
    """Reorder the output rows of ``weight [heads * head_dim, in]`` within each head by ``index``."""
    rows, cols = weight.shape
    return weight.reshape(rows // head_dim, head_dim, cols)[:, index].reshape(rows, cols)


def _repeat_heads(weight: torch.Tensor, head_dim: int, groups: int) -> torch.Tensor:
    """Each head's rows ``groups`` times in a row (fla's ``repeat(k, '... h d -> ... (h g) d')``)."""
    rows, cols = weight.shape
    return weight.reshape(rows // head_dim, head_dim, cols).repeat_interleave(groups, 0).reshape(-1, cols)


# ---------------------------------------------------------------------------------------------- config
def _field(cfg: dict[str, Any], name: str) -> Any:
    return cfg.get(name, DEFAULTS[name])


def check_fla_config(cfg: dict[str, Any], source: str, report: ConversionReport) -> None:
    """Refuse a config that is not fla's RetNet or uses an option without an exact equivalent here."""
    if cfg.get("model_type") != MODEL_TYPE:
        raise ConversionError(f"{source}: model_type is {cfg.get('model_type')!r}, not fla's {MODEL_TYPE!r}")
    if "decoder_embed_dim" in cfg:
        raise ConversionError(f"{source}: a syncdoth/RetNet config (decoder_embed_dim); use --from syncdoth")
    if "num_layers" in cfg and "num_hidden_layers" not in cfg:
        raise ConversionError(f"{source}: already a retnet model directory's config (num_layers), not fla's")
    for name, wanted, why in REQUIRED:
        value = _field(cfg, name)
        if value != wanted:
            raise ConversionError(f"{source}: unsupported {name}={value!r} ({why}; fla's default is {wanted!r})")
    archs = cfg.get("architectures")
    if archs is not None and archs != [ARCHITECTURE]:
        report.notes.append(f"architectures {archs}: converted the {ARCHITECTURE} weights")
    if _field(cfg, "use_short_conv"):
        report.notes.append("use_short_conv=true: fla's RetNet builds no short convolution either; ignored")


def _int_field(cfg: dict[str, Any], name: str, source: str) -> int:
    value = _field(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConversionError(f"{source}: {name} must be a positive int, got {value!r}")
    return value


def _expanded(cfg: dict[str, Any], name: str, hidden: int, source: str) -> int:
    """fla's ``int(hidden_size * expand_k)`` (or ``expand_v``)."""
    value = _field(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConversionError(f"{source}: {name} must be a positive number, got {value!r}")
    return int(hidden * value)


# ---------------------------------------------------------------------------------------------- fla -> ours
def convert_fla(
    cfg: dict[str, Any],
    sd: dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> tuple[Any, ConversionReport]:
    """A :class:`~retnet.models.RetNetForCausalLM` (eval mode) from fla's RetNet ``config.json`` dict and state
    dict. ``overrides`` set further :class:`RetNetConfig` fields (token ids, ``chunk_size``)."""
    report = ConversionReport()
    check_fla_config(cfg, source, report)
    embed = need(sd, EMBED, source)
    if embed.dim() != 2:
        raise ConversionError(f"{source}: tensor {EMBED!r} must be 2-D [vocab, hidden], got {tuple(embed.shape)}")
    V, d = embed.shape
    for name, got in (("vocab_size", V), ("hidden_size", d)):
        if _int_field(cfg, name, source) != got:
            raise ConversionError(f"{source}: {name}={cfg.get(name)} but tensor {EMBED!r} has shape {(V, d)}")
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := _LAYER_RE.match(k))})
    L = _int_field(cfg, "num_hidden_layers", source)
    if layer_ids != list(range(L)):
        raise ConversionError(f"{source}: num_hidden_layers={L} but the weights hold layers {layer_ids}")
    H = _int_field(cfg, "num_heads", source)
    kv_heads = _field(cfg, "num_kv_heads") or H
    if isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads < 1 or H % kv_heads:
        raise ConversionError(f"{source}: num_kv_heads={kv_heads!r} must be a positive divisor of num_heads={H}")
    groups = H // kv_heads
    kd, vd = _expanded(cfg, "expand_k", d, source), _expanded(cfg, "expand_v", d, source)
    if kd % H or vd % H or (kd // H) % 2:
        raise ConversionError(
            f"{source}: expand_k/expand_v give key dim {kd} and value dim {vd}, which {H} heads must divide into "
            "an even key head dim"
        )
    Dk, Dv = kd // H, vd // H
    for name, tensor, width in (("expand_k", "q_proj", kd), ("expand_v", "g_proj", vd)):
        rows = need(sd, f"model.layers.0.attn.{tensor}.weight", source).shape[0]
        if rows != width:
            raise ConversionError(
                f"{source}: {name}={_field(cfg, name)} gives width {width} but tensor "
                f"'model.layers.0.attn.{tensor}.weight' has {rows} rows"
            )
    f = need(sd, "model.layers.0.mlp.gate_proj.weight", source).shape[0]
    inter = _field(cfg, "intermediate_size")
    if inter is not None and inter != f:
        raise ConversionError(f"{source}: intermediate_size={inter} but the MLP weights have {f} rows")
    affine = bool(_field(cfg, "elementwise_affine"))
    expected = {
        "attn_norm.weight": (d,),
        "attn.q_proj.weight": (kd, d),
        "attn.k_proj.weight": (kd // groups, d),
        "attn.v_proj.weight": (vd // groups, d),
        "attn.g_proj.weight": (vd, d),
        "attn.o_proj.weight": (d, vd),
        "mlp_norm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    why = f"hidden {d}, {H} heads, {kv_heads} kv heads, key dim {kd}, value dim {vd}, intermediate {f}"
    known = {EMBED, FINAL_NORM, LM_HEAD}
    g_norms: list[str] = []
    for i in range(L):
        prefix = f"model.layers.{i}."
        for suffix, shape in expected.items():
            check_shape(sd, prefix + suffix, shape, source, why)
        known |= {prefix + s for s in LAYER_TENSORS}
        found = [prefix + n for n in G_NORM_NAMES if prefix + n in sd]
        if affine:
            if not found:
                raise ConversionError(f"{source}: missing tensor {prefix + G_NORM_NAMES[0]!r} (elementwise_affine)")
            check_shape(sd, found[0], (Dv,), source, f"value head dim {Dv}")
            g_norms.append(found[0])
            known.add(found[0])
        conv = sorted(k for k in sd if k.startswith(prefix + "attn.") and "_conv1d." in k)
        if conv:
            raise ConversionError(
                f"{source}: tensor {conv[0]!r}: a short convolution (use_short_conv), which fla's RetNet model "
                "never builds; this checkpoint is not from fla.models.retnet"
            )
    check_shape(sd, FINAL_NORM, (d,), source, why)
    check_no_unexpected(sd, known, source)
    tied = bool(_field(cfg, "tie_word_embeddings"))
    if not tied:
        check_shape(sd, LM_HEAD, (V, d), source, "tie_word_embeddings is false")
    elif LM_HEAD in sd and not torch.equal(sd[LM_HEAD], embed):
        raise ConversionError(f"{source}: tie_word_embeddings is true but {LM_HEAD!r} differs from {EMBED!r}")
    report.tied = tied
    if groups > 1:
        report.notes.append(f"num_kv_heads={kv_heads}: k/v projections repeated for the {H} query heads")
    if affine:
        report.notes.append("gated output norm weight folded into the output projection")
    tokens = {n: cfg.get(n, DEFAULTS[n]) for n in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = make_config(
        source,
        vocab_size=V,
        hidden_size=d,
        num_layers=L,
        num_heads=H,
        value_dim=vd,
        ffn_dim=f,
        activation="swish",
        head_norm="rms",
        norm_eps=float(_field(cfg, "norm_eps")),
        decay="official",
        tie_word_embeddings=tied,
        rotary_base=10000.0,
        rotary_frequencies="rope",
        key_dim=kd if kd != d else None,
        **{**{k: v for k, v in tokens.items() if isinstance(v, int) and not isinstance(v, bool)}, **overrides},
    )
    pairs = half_to_pairs(Dk)
    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": embed, "model.layer_norm.weight": sd[FINAL_NORM]}
    if not tied:
        tensors["lm_head.weight"] = sd[LM_HEAD]
    for i in range(L):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        for theirs, ours in RENAMES.items():
            tensors[dst + ours] = sd[src + theirs]
        q, k = sd[src + "attn.q_proj.weight"], _repeat_heads(sd[src + "attn.k_proj.weight"], Dk, groups)
        tensors[dst + "retention.q_proj.weight"] = _permute_heads(q, Dk, pairs)
        tensors[dst + "retention.k_proj.weight"] = _permute_heads(k, Dk, pairs)
        tensors[dst + "retention.v_proj.weight"] = _repeat_heads(sd[src + "attn.v_proj.weight"], Dv, groups)
        out = sd[src + "attn.o_proj.weight"]
        if affine:  # o_proj(w * y) = (o_proj * w) y, with w shared by the heads
            out = out.double() * sd[g_norms[i]].double().repeat(H)[None, :]
        tensors[dst + "retention.out_proj.weight"] = out
    return build_model(config, tensors, source, dtype), report


def convert_fla_directory(
    path: str | Path, *, dtype: torch.dtype = torch.float32, **overrides: Any
) -> tuple[Any, ConversionReport, dict[str, Any]]:
    """Read fla's checkpoint directory ``path``, convert it; also return its ``config.json`` dict."""
    cfg, sd = read_hf_checkpoint(path)
    model, report = convert_fla(cfg, sd, source=str(path), dtype=dtype, **overrides)
    return model, report, cfg


# ---------------------------------------------------------------------------------------------- ours -> fla
def _ratio(width: int, hidden: int, ours: str, theirs: str) -> float:
    """``theirs`` such that fla's ``int(hidden * theirs) == width``; refused (naming ``ours``) when none is."""
    ratio = width / hidden
    if int(hidden * ratio) != width:
        raise ConversionError(f"{ours}={width} is not int(hidden_size * {theirs}) for any float {theirs}")
    return ratio


def to_fla(model: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """fla's RetNet ``config.json`` dict and state dict for our ``model``; refuses (naming our config field) any
    option fla's RetNet cannot express."""
    c: RetNetConfig = model.config
    kinds = sorted(set(c.layer_kinds))
    unsupported = (
        ("architecture", c.architecture, c.architecture == "retnet", "fla's RetNet is a plain stack"),
        ("block_types / gated", kinds, kinds == ["retention"], "fla's RetNet has fixed-decay retention only"),
        ("decay", c.decay, c.decay == "official", "fla uses the schedule 1 - 2^(-5-h)"),
        ("rotary_frequencies", c.rotary_frequencies, c.rotary_frequencies == "rope", "fla rotates by base^(-2i/Dk)"),
        ("rotary_base", c.rotary_base, c.rotary_base == 10000.0, "fla's rotation base is 10000"),
        ("normalize_decay", c.normalize_decay, not c.normalize_decay, "fla has no decay normalisation"),
        ("embed_scale", c.embed_scale, c.embed_scale == 1.0, "fla does not scale embeddings"),
        ("layernorm_embedding", c.layernorm_embedding, not c.layernorm_embedding, "fla has no embedding norm"),
        ("activation", c.activation, c.activation in ("swish", "silu"), "fla's MLP is SwiGLU"),
        ("head_norm", c.head_norm, c.head_norm == "rms", "fla's output norm is an RMSNorm"),
    )
    for name, value, ok, why in unsupported:
        if not ok:
            raise ConversionError(f"cannot write fla's format: {name}={value!r} ({why})")
    d, H = c.hidden_size, c.num_heads
    kd = c.key_dim or d
    Dk = kd // H
    expand_k = _ratio(kd, d, "key_dim", "expand_k")
    expand_v = _ratio(c.value_dim, d, "value_dim", "expand_v")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    back = torch.argsort(half_to_pairs(Dk))
    # lm_head too when tied: fla's model loads it either way, and a strict load_state_dict needs it.
    tensors = {EMBED: sd["model.embed_tokens.weight"], FINAL_NORM: sd["model.layer_norm.weight"]}
    tensors[LM_HEAD] = sd["lm_head.weight"].clone() if c.tie_word_embeddings else sd["lm_head.weight"]
    for i in range(c.num_layers):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        for theirs, ours in RENAMES.items():
            tensors[dst + theirs] = sd[src + ours]
        tensors[dst + "attn.q_proj.weight"] = _permute_heads(sd[src + "retention.q_proj.weight"], Dk, back)
        tensors[dst + "attn.k_proj.weight"] = _permute_heads(sd[src + "retention.k_proj.weight"], Dk, back)
        tensors[dst + "attn.v_proj.weight"] = sd[src + "retention.v_proj.weight"]
        tensors[dst + "attn.o_proj.weight"] = sd[src + "retention.out_proj.weight"]
        tensors[dst + G_NORM_NAMES[0]] = torch.ones(c.value_head_dim, dtype=sd[src + "retention.g_proj.weight"].dtype)
    cfg = {
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        "attn_mode": "chunk",
        "hidden_size": d,
        "expand_k": expand_k,
        "expand_v": expand_v,
        "hidden_ratio": 2,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.num_layers,
        "num_heads": H,
        "num_kv_heads": None,
        "feature_map": None,
        "hidden_act": "swish",
        "use_short_conv": False,
        "use_output_gate": True,
        "elementwise_affine": True,
        "norm_eps": c.norm_eps,
        "attn": None,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "fuse_norm": True,
        "fuse_swiglu": True,
        "fuse_cross_entropy": True,
        "use_cache": True,
    }
    return cfg, {k: v.contiguous() for k, v in tensors.items()}


def save_fla_directory(model: Any, out_dir: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in fla's format, each atomically."""
    from retnet.models.io import save_model_dir

    cfg, tensors = to_fla(model)
    return save_model_dir(out_dir, tensors, cfg)
