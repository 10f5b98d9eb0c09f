"""``retnet eval MODEL_DIR``: loss, perplexity and bits per byte on a corpus; or lm-eval tasks (``--tasks``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retnet.cli.errors import CLIError
from retnet.cli.flags import POSITIVE, device_from_flag, number
from retnet.cli.model_dir import check_model_dir, load_model_dir, training_info
from retnet.data.batching import encode_tensor, num_windows
from retnet.data.corpus import CorpusError, load_corpus, split_corpus
from retnet.training.config import DEVICES, FIELD_BOUNDS

# Flags of a language-model evaluation that a classifier evaluation (--task) has no use for.
_LM_ONLY = ("data", "split", "val_fraction", "seq_len", "max_batches", "device")
# Flags of our own corpus evaluation that a harness run (--tasks) has no use for, and the harness's own flags.
_CORPUS_ONLY = ("data", "split", "val_fraction", "seq_len", "max_batches", "task")
_HARNESS_ONLY = ("limit", "include_path")


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
    p.add_argument(
        "--tasks",
        metavar="NAMES",
        help="run lm-evaluation-harness tasks, comma-separated (the bundled offline task: retnet_shakespeare); "
        "needs pip install 'retnet[eval]'",
    )
    p.add_argument(
        "--limit", type=number(POSITIVE), default=None, help="with --tasks: at most this many documents per task"
    )
    p.add_argument("--include-path", metavar="DIR", help="with --tasks: a folder of further lm-eval task YAML files")
    p.set_defaults(func=run)


def _flags(args: argparse.Namespace, dests: tuple[str, ...]) -> list[str]:
    """The flags among ``dests`` that were given on the command line."""
    return [f"--{d.replace('_', '-')}" for d in dests if getattr(args, d, None) is not None]


def check_combinations(args: argparse.Namespace) -> None:
    """Refuse flags that the others make meaningless (they would be silently ignored)."""
    if args.tasks is not None:
        unused = _flags(args, _CORPUS_ONLY)
        if unused:
            raise CLIError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --tasks")
    elif unused := _flags(args, _HARNESS_ONLY):
        raise CLIError(f"{', '.join(unused)} {'needs' if len(unused) == 1 else 'need'} --tasks")
    elif args.task:
        unused = [f"--{d.replace('_', '-')}" for d in _LM_ONLY if getattr(args, d) is not None]
        if unused:
            raise CLIError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --task")
    elif args.val_fraction is not None and (args.split or ("all" if args.data else "val")) == "all":
        raise CLIError("--val-fraction applies only to --split val or train (the whole corpus is evaluated)")


def run_classification(args: argparse.Namespace) -> int:
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


def run_harness(args: argparse.Namespace) -> int:
    """``--tasks``: lm-evaluation-harness on the directory through :class:`retnet.hf.harness.RetNetLM`."""
    path = check_model_dir(args.model_dir)
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not names:
        raise CLIError("--tasks names no task")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise CLIError(f"--include-path {args.include_path!r} is not a folder")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        from retnet.hf.harness import TASKS_DIR, RetNetLM, bundled_tasks
    except ImportError as exc:
        raise CLIError(f"--tasks needs lm-evaluation-harness ({exc}): pip install 'retnet[eval]'") from None
    include = [str(TASKS_DIR)] + ([args.include_path] if args.include_path else [])
    # Indexing lm-eval's own ~15,000 task files takes tens of seconds: only when a name is not one of ours.
    tasks = TaskManager(include_path=include, include_defaults=False)
    if any(not tasks.match_tasks([name]) for name in names):
        tasks = TaskManager(include_path=include)
    unknown = [name for name in names if not tasks.match_tasks([name])]
    if unknown:
        raise CLIError(
            f"--tasks: unknown task(s) {', '.join(unknown)} (bundled: {', '.join(bundled_tasks())}; "
            "lm-eval's own: `lm_eval ls tasks`)"
        )
    dev = device_from_flag(args.device or "auto")
    try:
        lm = RetNetLM(pretrained=str(path), batch_size=args.batch_size or 16, device=str(dev))
    except Exception as exc:
        raise CLIError(f"cannot load the model in {str(path)!r}: {str(exc).splitlines()[0]}") from None
    results = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tasks, limit=args.limit)
    if args.json:
        print(json.dumps(results["results"], indent=2))
    else:
        for name, figures in results["results"].items():
            print(f"{name} ({results['n-samples'][name]['effective']} documents): {harness_figures(figures)}")
    return 0


def harness_figures(figures: dict) -> str:
    """``metric value, ...`` from one task's harness results (its standard errors, names and counts left out)."""
    shown = []
    for key, value in figures.items():
        metric = key.split(",")[0]
        if isinstance(value, float) and not metric.endswith("_stderr"):
            shown.append(f"{metric} {value:.4f}" if abs(value) < 1e6 else f"{metric} {value:.4g}")
    return ", ".join(shown)


def run(args: argparse.Namespace) -> int:
    check_combinations(args)
    if args.tasks is not None:
        return run_harness(args)
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
