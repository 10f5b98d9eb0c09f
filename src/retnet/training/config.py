"""Training settings: one dataclass, named presets, and merging (preset < config file < flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retnet.models.directory import MAX_CONFIG_BYTES, parse_json_object, read_text
from retnet.training.errors import TrainError


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
    compile: bool = False  # torch.compile the training forward and backward

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Reject impossible settings with a message naming the field."""
        positive = [
            "seq_len",
            "batch_size",
            "eval_batch_size",
            "grad_accum",
            "steps",
            "eval_interval",
            "checkpoint_interval",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tokenizer not in ("bpe", "byte"):
            raise TrainError(f"tokenizer must be 'bpe' or 'byte', got {self.tokenizer!r}")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise TrainError(f"vocab_size must be >= 257 for a BPE tokenizer, got {self.vocab_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise TrainError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            raise TrainError(f"lr must be > 0, got {self.lr}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise TrainError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.retention_mode not in ("auto", "parallel", "chunkwise"):
            raise TrainError(f"retention_mode must be auto, parallel or chunkwise, got {self.retention_mode!r}")
        for name in ("fsdp", "checkpoint_activations", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TrainError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or self.eval_batches < 0 or self.final_eval_batches < 0 or self.keep_checkpoints < 1:
            raise TrainError("warmup_steps, eval_batches and final_eval_batches must be >= 0 and keep_checkpoints >= 1")


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
            if key == "model_overrides":
                merged["model_overrides"] = {**merged.get("model_overrides", {}), **value}
            else:
                merged[key] = value
    cfg = TrainConfig(**merged)
    cfg.validate()
    return cfg
