"""``retnet eval MODEL_DIR``: loss per token, perplexity and bits per byte on a corpus."""

from __future__ import annotations

import argparse
import json

from retnet.cli.errors import CLIError
from retnet.cli.flags import POSITIVE, device_from_flag, number
from retnet.cli.model_dir import check_model_dir, load_model_dir, training_info
from retnet.data.batching import encode_tensor, num_windows
from retnet.data.corpus import CorpusError, load_corpus, split_corpus
from retnet.training.config import DEVICES, FIELD_BOUNDS

# Flags of a language-model evaluation that a classifier evaluation (--task) has no use for.
_LM_ONLY = ("data", "split", "val_fraction", "seq_len", "max_batches", "device")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="perplexity and bits per byte of a model on a corpus")
    p.add_argument("model_dir", help="model directory")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="files, folders or globs (default: the corpus the model was trained on)",
    )
    p.add_argument(
        "--split",
        choices=["val", "train", "all"],
        default=None,
        help="which part of the corpus (default: val for the training corpus, all for --data)",
    )
    p.add_argument(
        "--val-fraction",
        type=number(FIELD_BOUNDS["val_fraction"]),
        default=None,
        help="validation share, in (0, 1) (default: the run's)",
    )
    p.add_argument("--seq-len", type=number(POSITIVE), default=None, help="window length (default: the run's)")
    p.add_argument("--batch-size", type=number(POSITIVE), default=None, help="sequences per batch (default 16)")
    p.add_argument("--max-batches", type=number(POSITIVE), default=None, help="evaluate only this many batches (>= 1)")
    p.add_argument("--device", default=None, choices=DEVICES, help="auto (default), cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--task", choices=("genre", "digits"), help="evaluate a classifier from `retnet train --task` on its test split"
    )
    p.set_defaults(func=run)


def check_combinations(args: argparse.Namespace) -> None:
    """Refuse flags that the others make meaningless (they would be silently ignored)."""
    if args.task:
        unused = [f"--{d.replace('_', '-')}" for d in _LM_ONLY if getattr(args, d) is not None]
        if unused:
            raise CLIError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --task")
    elif args.val_fraction is not None and (args.split or ("all" if args.data else "val")) == "all":
        raise CLIError("--val-fraction applies only to --split val or train (the whole corpus is evaluated)")


def run_classification(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retnet.data.tasks import load_task
    from retnet.models.directory import CheckpointError, read_json_file
    from retnet.training.classification import evaluate as evaluate_classifier
    from retnet.training.classification import load_classifier

    try:
        model = load_classifier(args.model_dir)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    wanted = "text" if args.task == "genre" else "vision"
    if model.config.kind != wanted:
        raise CLIError(f"{args.model_dir} holds a {model.config.kind} classifier, not one for task {args.task!r}")
    metrics_file = Path(args.model_dir) / "metrics.json"
    try:
        metrics = read_json_file(metrics_file, what="metrics file") if metrics_file.exists() else {}
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    task_kwargs = metrics.get("task_kwargs", {})
    test = load_task(args.task, "test", **task_kwargs)
    figures = {"task": args.task, **evaluate_classifier(model, test, batch_size=args.batch_size or 64)}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return 0


def run(args: argparse.Namespace) -> int:
    check_combinations(args)
    if args.task:
        return run_classification(args)
    from retnet.training.evaluate import evaluate

    path = check_model_dir(args.model_dir)
    run_cfg = (training_info(path) or {}).get("train_config", {})
    sources = args.data or run_cfg.get("data") or None
    split = args.split or ("all" if args.data else "val")
    val_fraction = args.val_fraction if args.val_fraction is not None else run_cfg.get("val_fraction", 0.05)
    seq_len = args.seq_len if args.seq_len is not None else run_cfg.get("seq_len", 256)
    batch_size = args.batch_size or 16
    try:
        corpus = load_corpus(sources)
        if split == "all":
            text = "\n\n".join(d.text for d in corpus.documents)
        else:
            train_text, val_text = split_corpus(corpus, val_fraction)
            text = val_text if split == "val" else train_text
    except (CorpusError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    dev = device_from_flag(args.device or "auto")
    model, tokenizer = load_model_dir(path, dev)
    tokens = encode_tensor(tokenizer, text)
    if num_windows(tokens.numel(), seq_len) < 1:
        raise CLIError(
            f"corpus {', '.join(corpus.sources)!r} ({split}) has {tokens.numel()} tokens, fewer than one "
            f"sequence of --seq-len {seq_len} + 1"
        )
    import torch

    res = evaluate(
        model,
        tokens,
        torch.tensor(tokenizer.byte_lengths()),
        seq_len=seq_len,
        batch_size=batch_size,
        max_batches=args.max_batches,
        device=dev,
    )
    figures = {"corpus": corpus.describe(), "split": split, "seq_len": seq_len, **res.to_dict()}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"{split} split of {corpus.describe()}: {res.tokens:,} tokens / {res.bytes:,} bytes; "
            f"loss {res.loss:.4f} nats/token, perplexity {res.perplexity:.2f}, {res.bits_per_byte:.4f} bits/byte"
        )
    return 0
