"""Training settings: one dataclass, named presets, and merging (preset < config file < flags)."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retnet.models.config import MAX_WIDTH
from retnet.models.directory import MAX_CONFIG_BYTES, parse_json_object, read_text
from retnet.training.errors import TrainError

if TYPE_CHECKING:
    from retnet.models import RetNetConfig

UINT64_MAX = 2**64 - 1  # the largest seed torch.manual_seed and torch.Generator accept
DEVICES = ("auto", "cpu", "cuda")


class SettingError(TrainError):
    """A setting of the wrong type or out of bounds; ``name`` is the field (or flag) it concerns."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


@dataclass(frozen=True)
class Bounds:
    """The allowed values of a number: an int (or any finite real with ``integer=False``) within lo..hi."""

    lo: int | float | None = None
    hi: int | float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = True

    def contains(self, x: int | float) -> bool:
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def describe(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


def check_number(name: str, value: Any, bounds: Bounds) -> None:
    """Raise :class:`SettingError` naming ``name`` unless ``value`` is a finite number within ``bounds``."""
    kind = "an integer" if bounds.integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or (bounds.integer and isinstance(value, float)):
        raise SettingError(name, f"must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(name, f"must be a finite number, got {value!r}")
    if not bounds.contains(value):
        raise SettingError(name, f"must be {bounds.describe()}, got {value!r}")


def _float(lo=None, hi=None, **kw) -> Bounds:
    return Bounds(lo, hi, integer=False, **kw)


# Every numeric TrainConfig field's bounds: checked for flags (at parse time), config files and presets alike.
FIELD_BOUNDS: dict[str, Bounds] = {
    "val_fraction": _float(0, 1, lo_open=True, hi_open=True),
    "vocab_size": Bounds(1, MAX_WIDTH),  # the model config's bound
    "seq_len": Bounds(1),
    "batch_size": Bounds(1),
    "grad_accum": Bounds(1),
    "steps": Bounds(1),
    "lr": _float(0, lo_open=True),
    "min_lr_ratio": _float(0, 1),
    "warmup_steps": Bounds(0),
    "weight_decay": _float(0),
    "beta1": _float(0, 1, hi_open=True),
    "beta2": _float(0, 1, hi_open=True),
    "grad_clip": _float(0),
    "eval_interval": Bounds(1),
    "eval_batches": Bounds(1),
    "final_eval_batches": Bounds(0),
    "eval_batch_size": Bounds(1),
    "checkpoint_interval": Bounds(1),
    "keep_checkpoints": Bounds(1),
    "checkpoint_segment": Bounds(0),
    "seed": Bounds(0, UINT64_MAX),
    "threads": Bounds(0, os.cpu_count() or 1),  # more threads than cores only makes each step slower
}
CHOICES: dict[str, tuple[str, ...]] = {
    "tokenizer": ("bpe", "byte"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "retention_mode": ("auto", "parallel", "chunkwise"),
    "device": DEVICES,
}


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved with every checkpoint and in ``training.json``)."""

    out: str = "runs/shakespeare"
    data: list[str] = field(default_factory=list)  # files, folders or globs; empty = embedded Shakespeare
    val_fraction: float = 0.05
    tokenizer: str = "bpe"  # "bpe" or "byte"
    vocab_size: int = 2048  # BPE only
    model: str = "tiny"  # a RetNetConfig preset
    model_overrides: dict[str, Any] = field(default_factory=dict)
    seq_len: int = 256
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 200
    eval_batches: int = 8  # batches per periodic evaluation
    final_eval_batches: int = 0  # batches in the final evaluation; 0 = the whole validation split
    eval_batch_size: int = 32
    checkpoint_interval: int = 200
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto, fp32, bf16, fp16
    retention_mode: str = "auto"  # auto (chunkwise for long sequences), parallel, chunkwise
    seed: int = 1234
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = the cores not already busy
    fsdp: bool = False
    checkpoint_activations: bool = False  # recompute each block in the backward pass (less memory, ~1/3 more time)
    checkpoint_segment: int = 1024  # with checkpoint_activations: tokens per recomputed retention segment (0: all)
    compile: bool = False  # torch.compile the training forward and backward

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Reject settings of the wrong type or out of bounds with a message naming the field."""
        for f in dataclasses.fields(self):
            check_field(f.name, getattr(self, f.name))
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise SettingError("vocab_size", f"must be >= 257 for a BPE tokenizer, got {self.vocab_size}")


def check_field(name: str, value: Any) -> None:
    """Raise :class:`SettingError` unless ``value`` has the type of field ``name`` and lies within its bounds."""
    kind = _FIELD_TYPES[name]
    if name in FIELD_BOUNDS:
        check_number(name, value, FIELD_BOUNDS[name])
    elif kind is str and not isinstance(value, str):
        raise SettingError(name, f"must be a string, got {value!r}")
    elif kind is bool and not isinstance(value, bool):
        raise SettingError(name, f"must be true or false, got {value!r}")
    elif typing.get_origin(kind) is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise SettingError(name, f"must be a list of paths, got {value!r}")
    elif typing.get_origin(kind) is dict and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
        raise SettingError(name, f"must be a mapping of model config fields, got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise SettingError(name, f"must be one of {', '.join(CHOICES[name])}, got {value!r}")


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


# Training presets: model shape + schedule. The default is sized for the README's main job (a 2-core CPU,
# at most 5 minutes, validation < 2.5 bits per byte on the embedded Shakespeare); see README.md.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "shakespeare": {
        "model": "tiny",
        "model_overrides": {"hidden_size": 128, "num_layers": 4, "num_heads": 2, "value_dim": 256, "ffn_dim": 256},
        "tokenizer": "bpe",
        "vocab_size": 2048,
        "seq_len": 256,
        "batch_size": 16,
        "steps": 200,
        "lr": 3e-3,
        "warmup_steps": 30,
        "eval_interval": 100,
        "eval_batches": 4,
        "checkpoint_interval": 100,
    },
    # A seconds-long smoke run (tests, trying the pipeline).
    "smoke": {
        "model": "tiny",
        "model_overrides": {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "value_dim": 64, "ffn_dim": 128},
        "tokenizer": "byte",
        "seq_len": 64,
        "batch_size": 4,
        "steps": 20,
        "lr": 3e-3,
        "warmup_steps": 5,
        "eval_interval": 10,
        "eval_batches": 2,
        "final_eval_batches": 4,
        "eval_batch_size": 8,
        "checkpoint_interval": 10,
    },
}
DEFAULT_PRESET = "shakespeare"


def model_preset_names() -> list[str]:
    from retnet.models import PRESETS

    return list(PRESETS)


def preset_settings(name: str) -> dict[str, Any]:
    """A training preset by name, or any model preset (``tiny`` ... ``65b``) with the default schedule."""
    if name in TRAIN_PRESETS:
        return dict(TRAIN_PRESETS[name])
    from retnet.models import RetNetConfig

    try:
        RetNetConfig.preset(name, vocab_size=256)
    except (KeyError, ValueError):
        known = sorted(TRAIN_PRESETS) + model_preset_names()
        raise TrainError(f"unknown preset {name!r}; known presets: {', '.join(known)}") from None
    settings = dict(TRAIN_PRESETS[DEFAULT_PRESET])
    settings.update(model=name, model_overrides={})
    return settings


def build_model_config(cfg: TrainConfig, vocab_size: int) -> RetNetConfig:
    """The model config of a run: its model preset with ``model_overrides``; errors name the field."""
    from retnet.models import RetNetConfig

    try:
        return RetNetConfig.preset(cfg.model, **{**cfg.model_overrides, "vocab_size": vocab_size})
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainError(f"model {cfg.model!r} with overrides {cfg.model_overrides}: {exc}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML, TOML or JSON file (keys are :class:`TrainConfig` fields; ``preset`` allowed)."""
    path = Path(path)
    if not path.exists():
        raise TrainError(f"config file {str(path)!r} does not exist")
    text = read_text(path, MAX_CONFIG_BYTES, what="config file", error=TrainError)
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = parse_json_object(text, path, what="config file", error=TrainError)
        else:
            raise TrainError(f"config file {str(path)!r} must end in .yaml, .yml, .toml or .json")
    except TrainError:
        raise
    except Exception as exc:
        raise TrainError(f"config file {str(path)!r} cannot be parsed: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise TrainError(f"config file {str(path)!r} must hold a mapping of settings")
    for key, value in data.items():
        if key in _FIELD_TYPES:
            try:
                check_field(key, [value] if key == "data" and isinstance(value, str) else value)
            except SettingError as exc:
                raise TrainError(f"config file {str(path)!r}: {exc}") from None
    return data


def build_config(
    preset: str | None = None, file_settings: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Merge preset < config file < explicit overrides into a validated :class:`TrainConfig`."""
    file_settings = dict(file_settings or {})
    name = preset or file_settings.pop("preset", None) or DEFAULT_PRESET
    file_settings.pop("preset", None)
    merged: dict[str, Any] = preset_settings(name)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for source, settings in (("config file", file_settings), ("override", overrides or {})):
        for key, value in settings.items():
            if key not in names:
                raise TrainError(f"unknown setting {key!r} in {source}; known: {', '.join(sorted(names))}")
            if value is None:
                continue
            if key == "data" and isinstance(value, str):
                value = [value]
            if key == "model_overrides":
                check_field(key, value)
                merged["model_overrides"] = {**merged.get("model_overrides", {}), **value}
            else:
                merged[key] = value
    cfg = TrainConfig(**merged)
    cfg.validate()
    return cfg
