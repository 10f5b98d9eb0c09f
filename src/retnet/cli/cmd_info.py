"""``retnet info PRESET|MODEL_DIR``: parameter count and shape of a preset, or a trained model's summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from retnet.cli.errors import CLIError
from retnet.cli.model_dir import check_model_dir, load_tokenizer, read_model_config, training_info
from retnet.models.directory import TOKENIZER_FILE

_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "value_dim", "ffn_dim", "gated")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="describe a preset (parameters, shape) or a trained model directory")
    p.add_argument("target", help="a preset name (training or model preset) or a model directory")
    p.set_defaults(func=run)


def _shape(config_dict: dict) -> str:
    return ", ".join(f"{k}={config_dict[k]}" for k in _SHAPE_KEYS if k in config_dict)


def _describe_preset(name: str) -> None:
    from retnet.training.config import TRAIN_PRESETS, build_model_config, preset_settings
    from retnet.training.errors import TrainError

    try:
        settings = preset_settings(name)
    except TrainError as exc:
        raise CLIError(str(exc)) from None
    from retnet.training.config import TrainConfig

    cfg = TrainConfig(**settings)
    vocab = cfg.vocab_size if cfg.tokenizer == "bpe" else 256
    if name not in TRAIN_PRESETS:
        vocab = 256
        from retnet.models import RetNetConfig

        config = RetNetConfig.preset(name)
        vocab = config.vocab_size
    else:
        config = build_model_config(cfg, vocab)
    print(f"preset {name}: {config.num_parameters():,} parameters")
    print(f"  shape: {_shape(config.to_dict())}")
    if name in TRAIN_PRESETS:
        print(
            f"  training: model preset {cfg.model}, {cfg.tokenizer} tokenizer, seq_len {cfg.seq_len}, "
            f"batch {cfg.batch_size} x {cfg.grad_accum}, {cfg.steps} steps, lr {cfg.lr}"
        )


def _describe_model_dir(path: Path) -> None:
    path = check_model_dir(path)
    config = read_model_config(path)
    has_tokenizer = (path / TOKENIZER_FILE).exists()  # a link to a device is an error, not "no tokenizer"
    tokenizer = load_tokenizer(path, config.vocab_size) if has_tokenizer else None  # before any output
    print(f"model {path}: {config.num_parameters():,} parameters")
    print(f"  shape: {_shape(config.to_dict())}")
    if tokenizer is not None:
        print(f"  tokenizer: {tokenizer.describe()}")
    info = training_info(path)
    if info:
        tc = info.get("train_config", {})
        print(f"  trained on: {info.get('corpus')}")
        print(
            f"  training: {tc.get('steps')} steps, seq_len {tc.get('seq_len')}, batch {tc.get('batch_size')} x "
            f"{tc.get('grad_accum')}, lr {tc.get('lr')}"
            + (f", {info['elapsed_s']:.0f} s" if info.get("elapsed_s") else "")
        )
        fv = info.get("final_validation")
        if fv:
            print(
                f"  validation: loss {fv['loss']:.4f} nats/token, perplexity {fv['perplexity']:.2f}, "
                f"{fv['bits_per_byte']:.4f} bits/byte"
            )
    from retnet.training.checkpoint import list_checkpoints

    ckpts = list_checkpoints(path)
    if ckpts:
        print(f"  checkpoints: {', '.join(p.name for _, p in ckpts)}")


def run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.exists() or "/" in args.target or args.target.startswith("."):
        _describe_model_dir(target)
    else:
        _describe_preset(args.target)
    return 0
