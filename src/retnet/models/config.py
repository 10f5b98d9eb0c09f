"""``RetNetConfig``: every shape and option of a RetNet LM, validated, with the official presets."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from retnet.models.directory import CONFIG_FILE, CheckpointError, atomic_write_json, read_config_json, read_json_file

MODEL_TYPE = "retnet"

# Layer kinds: fixed-decay retention, gated retention, causal softmax attention (own KV cache), and YOCO's
# cross-attention (reads the one shared KV cache). One letter each for compact patterns such as "RRRA".
LAYER_TYPES = ("retention", "gated", "attention")
LAYER_LETTERS = {"R": "retention", "G": "gated", "A": "attention"}
ARCHITECTURES = ("retnet", "yoco")

# name: (hidden_size, value_dim == ffn_dim, num_layers, num_heads). Official torchscale presets
# plus two CPU-sized ones.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=192, value_dim=324, ffn_dim=324, num_layers=4, num_heads=2, vocab_size=256),
    "small": dict(hidden_size=512, value_dim=864, ffn_dim=864, num_layers=8, num_heads=4, vocab_size=256),
    # Variants (issue 9): gated retention everywhere, a hybrid with softmax attention every 4th layer, YOCO.
    "tiny-gated": dict(
        hidden_size=192, value_dim=324, ffn_dim=324, num_layers=4, num_heads=2, vocab_size=256, gated=True
    ),
    "tiny-hybrid": dict(
        hidden_size=192, value_dim=324, ffn_dim=324, num_layers=4, num_heads=2, vocab_size=256, block_types="GGGA"
    ),
    "tiny-yoco": dict(
        hidden_size=192, value_dim=324, ffn_dim=324, num_layers=4, num_heads=2, vocab_size=256, architecture="yoco"
    ),
    "small-gated": dict(
        hidden_size=512, value_dim=864, ffn_dim=864, num_layers=8, num_heads=4, vocab_size=256, gated=True
    ),
    "small-hybrid": dict(
        hidden_size=512, value_dim=864, ffn_dim=864, num_layers=8, num_heads=4, vocab_size=256, block_types="GGGA"
    ),
    "small-yoco": dict(
        hidden_size=512, value_dim=864, ffn_dim=864, num_layers=8, num_heads=4, vocab_size=256, architecture="yoco"
    ),
    "base": dict(hidden_size=512, value_dim=864, ffn_dim=864, num_layers=6, num_heads=2),
    "medium": dict(hidden_size=1024, value_dim=1728, ffn_dim=1728, num_layers=16, num_heads=4),
    "xl": dict(hidden_size=2048, value_dim=3456, ffn_dim=3456, num_layers=24, num_heads=8),
    "3b": dict(hidden_size=2560, value_dim=4280, ffn_dim=4280, num_layers=32, num_heads=10),
    "7b": dict(hidden_size=4096, value_dim=6912, ffn_dim=6912, num_layers=32, num_heads=16),
    "13b": dict(hidden_size=5120, value_dim=8560, ffn_dim=8560, num_layers=40, num_heads=20),
    "65b": dict(hidden_size=8192, value_dim=13824, ffn_dim=13824, num_layers=64, num_heads=32),
}


# Sizes no real model reaches: a config beyond them is a mistake, refused before anything is allocated.
MAX_LAYERS = 10_000
MAX_WIDTH = 1 << 24  # any other size field (vocabulary, widths, heads, chunk)
MAX_PARAMETERS = 10**11


class ConfigError(ValueError):
    """An invalid configuration; the message names the field."""


@dataclass
class RetNetConfig:
    """Shapes and options of a RetNet language model (defaults: the official ``base`` shape)."""

    vocab_size: int = 50257
    hidden_size: int = 512
    num_layers: int = 6
    num_heads: int = 2
    value_dim: int = 864
    ffn_dim: int = 864
    activation: str = "swish"
    head_norm: str = "rms"
    norm_eps: float = 1e-6
    decay: str = "official"
    # torchscale compatibility: scale each head's output by 1/sqrt(sum of its decay weights) before the head norm
    # (a no-op up to the norm's eps; set by ``retnet convert --from torchscale``).
    normalize_decay: bool = False
    gated: bool = False
    gate_temperature: float = 16.0
    block_types: list[str] | str | None = None
    architecture: str = "retnet"
    num_kv_heads: int | None = None
    tie_word_embeddings: bool = False
    embed_scale: float = 1.0
    layernorm_embedding: bool = False  # RMSNorm on the scaled embeddings (torchscale's option of that name)
    rotary_base: float = 10000.0
    # Rotation frequencies: "retnet" 1/base^(i/(Dk/2-1)) as torchscale; "rope" 1/base^(2i/Dk) as RoFormer and
    # flash-linear-attention (set by ``retnet convert --from fla``).
    rotary_frequencies: str = "retnet"
    # Query/key width of retention layers (default hidden_size; flash-linear-attention's hidden_size * expand_k).
    key_dim: int | None = None
    chunk_size: int = 64
    dropout: float = 0.0
    initializer_range: float | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "value_dim", "ffn_dim", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
            limit = MAX_LAYERS if name == "num_layers" else MAX_WIDTH
            if value > limit:
                raise ConfigError(f"{name} must be <= {limit}, got {value}")
        if self.key_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if self.value_dim % self.num_heads:
            raise ConfigError(f"value_dim {self.value_dim} is not divisible by {self.num_heads} heads")
        if self.key_dim is not None:
            value = self.key_dim
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WIDTH:
                raise ConfigError(f"key_dim must be a positive int <= {MAX_WIDTH} or null, got {value!r}")
            if value % self.num_heads:
                raise ConfigError(f"key_dim {value} is not divisible by {self.num_heads} heads")
        if self.key_head_dim % 2:
            which = "key_dim" if self.key_dim is not None else "hidden_size"
            raise ConfigError(f"key head dim {which}/num_heads = {self.key_head_dim} must be even (rotation)")
        choices = {
            "activation": ("swish", "silu", "gelu", "relu"),
            "head_norm": ("rms", "group", "layer"),
            "decay": ("official", "paper"),
            "rotary_frequencies": ("retnet", "rope"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("gated", "tie_word_embeddings", "layernorm_embedding", "normalize_decay"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _check_number("embed_scale", self.embed_scale, "a positive number", lambda v: v > 0)
        _check_number("rotary_base", self.rotary_base, "a positive number", lambda v: v > 0)
        if self.normalize_decay and self.gated:
            raise ConfigError("normalize_decay applies to fixed-decay retention only, not gated=true")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.gated and self.block_types is not None:
            raise ConfigError("gated=True is the shortcut for all-gated layers; give either gated or block_types")
        self.block_types = _normalise_block_types(self.block_types, self.num_layers, self.architecture)
        if self.num_kv_heads is not None:
            if isinstance(self.num_kv_heads, bool) or not isinstance(self.num_kv_heads, int) or self.num_kv_heads < 1:
                raise ConfigError(f"num_kv_heads must be a positive int or null, got {self.num_kv_heads!r}")
            if self.num_heads % self.num_kv_heads:
                raise ConfigError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.architecture == "yoco" and self.num_layers < 2:
            raise ConfigError(
                f"architecture 'yoco' needs num_layers >= 2 (self- and cross-decoder), got {self.num_layers}"
            )
        if self.normalize_decay and any(kind != "retention" for kind in self.layer_kinds):
            raise ConfigError("normalize_decay applies to fixed-decay retention layers only")
        if self.key_dim is not None and any(kind not in ("retention", "gated") for kind in self.layer_kinds):
            raise ConfigError("key_dim applies to retention layers only (attention layers use hidden_size)")
        _check_number("norm_eps", self.norm_eps, ">= 0", lambda v: v >= 0)
        _check_number("gate_temperature", self.gate_temperature, "> 0", lambda v: v > 0)
        _check_number("dropout", self.dropout, "in [0, 1)", lambda v: 0 <= v < 1)
        if self.initializer_range is not None:
            _check_number("initializer_range", self.initializer_range, "> 0 or null", lambda v: v > 0)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be a non-negative int or null, got {value!r}")
        if self.num_parameters() > MAX_PARAMETERS:
            raise ConfigError(
                f"vocab_size {self.vocab_size}, hidden_size {self.hidden_size}, num_layers {self.num_layers}, "
                f"value_dim {self.value_dim} and ffn_dim {self.ffn_dim} make {self.num_parameters():.3g} "
                f"parameters, over the limit of {MAX_PARAMETERS:.0e}"
            )

    # ------------------------------------------------------------------ derived
    @property
    def key_head_dim(self) -> int:
        return (self.key_dim or self.hidden_size) // self.num_heads

    @property
    def value_head_dim(self) -> int:
        return self.value_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads of (cross-)attention layers (``num_kv_heads``, default ``num_heads``)."""
        return self.num_kv_heads or self.num_heads

    @property
    def num_self_layers(self) -> int:
        """Layers of YOCO's self-decoder (the first half); all layers for a plain stack."""
        return self.num_layers // 2 if self.architecture == "yoco" else self.num_layers

    @property
    def layer_kinds(self) -> list[str]:
        """Each layer's kind: ``retention``, ``gated``, ``attention`` or (YOCO's second half) ``cross``."""
        if self.block_types is not None:
            kinds = list(self.block_types)
        else:
            kinds = ["gated" if self.gated or self.architecture == "yoco" else "retention"] * self.num_self_layers
        return kinds[: self.num_self_layers] + ["cross"] * (self.num_layers - self.num_self_layers)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count from the shapes (equals ``sum(p.numel())`` of the built model)."""
        d, dv, f, H = self.hidden_size, self.value_dim, self.ffn_dim, self.num_heads
        kv = self.kv_heads * self.key_head_dim
        total = d  # final norm
        for kind in self.layer_kinds:
            total += 3 * d * f + 2 * d  # fc1, gate, fc2; two RMSNorms
            if kind in ("retention", "gated"):
                total += 2 * d * (self.key_dim or d) + 3 * d * dv + (2 * dv if self.head_norm == "group" else 0)
                total += d * H if kind == "gated" else 0
            elif kind == "attention":
                total += 2 * d * d + 2 * d * kv  # q, out; k, v
            else:  # cross: q and out only; k, v are shared
                total += 2 * d * d
        if self.layernorm_embedding:
            total += d
        if self.architecture == "yoco":
            total += 2 * d * kv + d  # the shared k, v projections and their input norm
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return total

    def state_nbytes_per_layer(self, batch_size: int = 1) -> int:
        """Bytes of one retention layer's recurrent state (float32 ``[B, H, Dk, Dv]``)."""
        return 4 * batch_size * self.num_heads * self.key_head_dim * self.value_head_dim

    def kv_nbytes_per_token(self, dtype_bytes: int = 4, batch_size: int = 1) -> int:
        """Bytes one token adds to one KV cache (rotated keys and values, ``kv_heads * Dk`` each)."""
        return 2 * batch_size * self.kv_heads * self.key_head_dim * dtype_bytes

    def state_nbytes(self, context_len: int, *, batch_size: int = 1, dtype_bytes: int = 4) -> int:
        """Bytes of the decoding state after ``context_len`` tokens without padding (the formula that
        ``RetNetState.nbytes()`` measures): fixed retention states, one KV cache per attention layer, one
        shared KV cache for YOCO's cross-decoder, and the ``[B]`` long offsets."""
        kinds = self.layer_kinds
        fixed = sum(self.state_nbytes_per_layer(batch_size) for k in kinds if k in ("retention", "gated"))
        caches = sum(k == "attention" for k in kinds) + (1 if self.architecture == "yoco" else 0)
        return fixed + caches * context_len * self.kv_nbytes_per_token(dtype_bytes, batch_size) + 8 * batch_size

    # ------------------------------------------------------------------ presets and (de)serialisation
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> RetNetConfig:
        """A named preset (``tiny``, ``small``, ``base``, ``medium``, ``xl``, ``3b``, ``7b``, ``13b``, ``65b``,
        and the variants ``tiny-gated``, ``tiny-hybrid``, ``tiny-yoco``, ``small-gated``, ...)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], allowed: frozenset[str] = frozenset()) -> RetNetConfig:
        """Build from a dict; unknown fields raise :class:`ConfigError` naming them (keys in ``allowed``,
        such as those ``transformers`` writes, are ignored)."""
        return cls(**config_fields(data, allowed))

    def replace(self, **changes: Any) -> RetNetConfig:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON to ``path`` atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RetNetConfig:
        """Read a config JSON file (size-limited; a :class:`CheckpointError` names a missing or bad file)."""
        return cls.from_dict(read_json_file(path))


def config_fields(data: dict[str, Any], allowed: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The :class:`RetNetConfig` fields of a config dict; :class:`ConfigError` names a wrong ``model_type``
    or any key that is neither a field nor in ``allowed``."""
    model_type = data.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ConfigError(f"model_type must be {MODEL_TYPE!r}, got {model_type!r}")
    known = {f.name for f in fields(RetNetConfig)}
    unknown = sorted(set(data) - known - allowed - {"model_type"})
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    return {k: v for k, v in data.items() if k in known}


def load_model_config(directory: str | os.PathLike, allowed: frozenset[str] = frozenset()) -> RetNetConfig:
    """The validated :class:`RetNetConfig` of a model directory's ``config.json``; a
    :class:`CheckpointError` names the file and the bad field."""
    data = read_config_json(directory)
    try:
        return RetNetConfig.from_dict(data, allowed)
    except ConfigError as exc:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: {exc}") from None


def _check_number(name: str, value: Any, requirement: str, ok: Callable[[float], bool]) -> None:
    """A finite int or float meeting ``ok``; otherwise a :class:`ConfigError` naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{name} must be {requirement}, got {value!r}")


def _normalise_block_types(value: Any, num_layers: int, architecture: str) -> list[str] | None:
    """``block_types`` as a list of kinds, one per (self-decoder) layer, or ``None`` for the default.

    Accepts a list of kinds or a compact string of letters ``R`` (retention), ``G`` (gated), ``A``
    (attention), repeated to the number of layers: ``"GGGA"`` puts attention in every 4th layer.
    """
    if value is None:
        return None
    n = num_layers // 2 if architecture == "yoco" else num_layers
    where = "the self-decoder's layers" if architecture == "yoco" else "num_layers"
    if isinstance(value, str):
        letters = value.replace(" ", "").upper()
        bad = sorted(set(letters) - set(LAYER_LETTERS))
        if not letters or bad:
            raise ConfigError(
                f"block_types pattern {value!r} must use the letters R (retention), G (gated), A (attention)"
            )
        if n % len(letters):
            raise ConfigError(f"block_types pattern {value!r} (length {len(letters)}) does not tile {where} = {n}")
        return [LAYER_LETTERS[c] for c in letters * (n // len(letters))]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"block_types must be a list of {LAYER_TYPES} or a pattern string, got {value!r}")
    kinds = list(value)
    for i, kind in enumerate(kinds):
        if kind not in LAYER_TYPES:
            raise ConfigError(f"block_types[{i}] must be one of {LAYER_TYPES}, got {kind!r}")
    if len(kinds) != n:
        raise ConfigError(f"block_types has {len(kinds)} entries but {where} = {n}")
    return kinds
