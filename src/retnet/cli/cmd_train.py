"""``retnet train``: train a RetNet language model (presets, a YAML/TOML config file, flags; torchrun-ready)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from retnet.cli.errors import CLIError
from retnet.cli.flags import POSITIVE, number
from retnet.training.config import (
    CHOICES,
    DEFAULT_PRESET,
    FIELD_BOUNDS,
    TRAIN_PRESETS,
    build_config,
    read_config_file,
)
from retnet.training.errors import TrainError

# flag -> TrainConfig field, type
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--tokenizer", "tokenizer", str, "bpe (trained on the training split) or byte"),
    ("--vocab-size", "vocab_size", int, "BPE vocabulary size"),
    ("--model", "model", str, "model preset (tiny, small, base, ...)"),
    ("--seq-len", "seq_len", int, "tokens per training sequence"),
    ("--batch-size", "batch_size", int, "sequences per micro-batch per process"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimizer step"),
    ("--steps", "steps", int, "optimizer steps"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--min-lr-ratio", "min_lr_ratio", float, "final learning rate as a fraction of the peak"),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--grad-clip", "grad_clip", float, "gradient-norm clipping (0: off)"),
    ("--val-fraction", "val_fraction", float, "tail of each document held out for validation"),
    ("--eval-interval", "eval_interval", int, "steps between evaluations"),
    ("--eval-batches", "eval_batches", int, "batches per periodic evaluation"),
    ("--final-eval-batches", "final_eval_batches", int, "batches in the final evaluation (0: all)"),
    ("--eval-batch-size", "eval_batch_size", int, "sequences per evaluation batch"),
    ("--checkpoint-interval", "checkpoint_interval", int, "steps between checkpoints"),
    ("--keep-checkpoints", "keep_checkpoints", int, "checkpoints kept"),
    (
        "--checkpoint-segment",
        "checkpoint_segment",
        int,
        "with --checkpoint-activations: tokens per recomputed retention segment (0: the whole sequence)",
    ),
    ("--precision", "precision", str, "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16"),
    ("--retention-mode", "retention_mode", str, "auto (chunkwise for long sequences), parallel or chunkwise"),
    ("--seed", "seed", int, "random seed (init, data order)"),
    ("--device", "device", str, "auto, cpu or cuda"),
    ("--threads", "threads", int, "CPU threads (0: the cores not already busy, by load average)"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (default: the embedded Shakespeare, a few minutes on a CPU)",
        description="Train a RetNet LM. Settings: --preset < --config FILE < flags. Run under torchrun for "
        "multi-GPU / multi-node (DDP, or FSDP2 with --fsdp).",
    )
    p.add_argument(
        "--preset", help=f"training preset ({', '.join(TRAIN_PRESETS)}) or a model preset (default {DEFAULT_PRESET})"
    )
    p.add_argument("--config", help="YAML, TOML or JSON file of settings (TrainConfig field names)")
    p.add_argument("--out", help="output model directory (default runs/shakespeare)")
    p.add_argument("--data", nargs="+", metavar="PATH", help="corpus files, folders or globs (default: embedded)")
    for flag, dest, typ, help_ in _FLAGS:
        checked = number(FIELD_BOUNDS[dest]) if dest in FIELD_BOUNDS else typ
        p.add_argument(flag, dest=dest, type=checked, choices=CHOICES.get(dest), help=help_)
    p.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one model config field, e.g. --model-set hidden_size=256 (repeatable)",
    )
    p.add_argument("--fsdp", action="store_true", default=None, help="shard with FSDP2 under torchrun")
    p.add_argument(
        "--checkpoint-activations",
        action="store_true",
        default=None,
        help="recompute each block in the backward pass: less memory, more time",
    )
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the training steps")
    p.add_argument(
        "--malloc",
        choices=["retain", "return"],
        default=None,
        help="glibc memory: retain (default; large blocks reused, fastest steps) or return (freed blocks go back "
        "at once: lowest peak memory, steps pay page faults)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint in --out (or the given file)",
    )
    p.add_argument(
        "--stop-after",
        type=number(POSITIVE),
        metavar="STEP",
        help="stop after this step (checkpointed), as if interrupted",
    )
    p.add_argument(
        "--task",
        choices=("genre", "digits"),
        help="train a classifier instead of an LM: genre (bidirectional encoder) or digits (2-D retention)",
    )
    p.add_argument(
        "--arch", choices=("retnet", "transformer"), help="with --task: RetNet (default) or the Transformer baseline"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _model_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--model-set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


# What a classifier run (--task) uses; every other setting is for language models only.
_TASK_DESTS = ("task", "arch", "out", "steps", "batch_size", "lr", "seed", "no_progress", "quiet", "malloc")


def check_combinations(args: argparse.Namespace) -> None:
    """Refuse flags that the others make meaningless (they would be silently ignored)."""
    given = [d for d, v in vars(args).items() if d not in ("func", "command") and v is not None and v is not False]
    if args.task:
        unused = [f"--{d.replace('_', '-')}" for d in given if d not in _TASK_DESTS and getattr(args, d) != []]
        if unused:
            raise CLIError(
                f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --task {args.task} "
                "(a classifier run takes --arch, --steps, --batch-size, --lr, --seed and --out)"
            )
    elif args.arch:
        raise CLIError("--arch applies only with --task (it picks the classifier's architecture)")


def run_classification(args: argparse.Namespace) -> int:
    """``retnet train --task ...``: train and evaluate a classifier on an embedded task."""
    from pathlib import Path

    from retnet.training.classification import run_task

    args.arch = args.arch or "retnet"
    out = Path(args.out or f"runs/{args.task}-{args.arch}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CLIError(f"output folder {out} is not writable: {exc.strerror}") from None
    result = run_task(
        args.task,
        args.arch,
        out_dir=out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed or 0,
        progress=not (args.no_progress or args.quiet),
    )
    if not args.quiet:
        extra = f", play accuracy {result.extra['group_accuracy']:.3f}" if "group_accuracy" in result.extra else ""
        print(
            f"{args.task} ({args.arch}, {result.parameters:,} parameters): test accuracy {result.accuracy:.3f}, "
            f"balanced {result.balanced_accuracy:.3f}{extra}; saved to {out}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from retnet.runtime.malloc import configure

    check_combinations(args)
    configure(args.malloc or "retain")  # retain: each step allocates the same large tensors; keep them
    if args.task:
        return run_classification(args)
    from retnet.training.distributed import teardown
    from retnet.training.trainer import train

    try:
        file_settings = read_config_file(args.config) if args.config else {}
        overrides: dict[str, Any] = {dest: getattr(args, dest) for _, dest, _, _ in _FLAGS}
        overrides.update(out=args.out, data=args.data, fsdp=args.fsdp)
        overrides.update(checkpoint_activations=args.checkpoint_activations, compile=args.compile)
        if args.model_set:
            overrides["model_overrides"] = _model_overrides(args.model_set)
        cfg = build_config(args.preset, file_settings, overrides)
        if args.vocab_size is not None and cfg.tokenizer != "bpe":
            raise CLIError(f"--vocab-size applies only to the bpe tokenizer, not {cfg.tokenizer!r} (--tokenizer)")
        train(cfg, resume=args.resume, stop_after=args.stop_after, quiet=args.quiet, progress=not args.no_progress)
    except TrainError as exc:
        raise CLIError(str(exc)) from None
    finally:
        teardown()
    return 0
