"""``retnet bench classify``: accuracy of the retention classifiers next to equal-size attention baselines.

Genre of a Shakespeare passage (bidirectional RetNet encoder vs a Transformer encoder; split by play) and
8x8 handwritten digits (2-D RetNet vs a ViT). Same data, steps, optimizer and seed for both architectures.
"""

from __future__ import annotations

import argparse
from typing import Any

from retnet_benchmarks.options import add_out_dir, add_threads
from retnet_benchmarks.report import subplots


def run(args: argparse.Namespace) -> int:
    import torch

    from retnet.training.classification import run_task
    from retnet_benchmarks.report import write_report

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for task in args.tasks:
        for arch in ("retnet", "transformer"):
            r = run_task(
                task, arch, steps=args.steps.get(task) if args.steps else None, seed=args.seed, progress=not args.quiet
            )
            row = {
                "task": task,
                "arch": arch,
                "parameters": r.parameters,
                "accuracy": r.accuracy,
                "balanced_accuracy": r.balanced_accuracy,
                "steps": r.steps,
                "train_s": r.train_seconds,
                "final_loss": r.final_loss,
                "test_examples": r.extra["n"],
            }
            if "group_accuracy" in r.extra:
                row["play_accuracy"] = r.extra["group_accuracy"]
            rows.append(row)
            print(row, flush=True)
    summary = {}
    for task in args.tasks:
        acc = {r["arch"]: r["accuracy"] for r in rows if r["task"] == task}
        summary[f"{task}: retnet accuracy - transformer accuracy"] = acc["retnet"] - acc["transformer"]
    chart = _chart(rows)
    paths = write_report(
        "classify",
        title="Classification accuracy: retention vs softmax attention of equal size",
        rows=rows,
        columns=[
            "task",
            "arch",
            "parameters",
            "accuracy",
            "balanced_accuracy",
            "play_accuracy",
            "steps",
            "train_s",
            "final_loss",
            "test_examples",
        ],
        summary=summary,
        out_dir=args.out_dir,
        chart=chart,
        notes=(
            "genre: 256-byte passages, 6 genres, test plays never seen in training (every 4th play of each genre); "
            "balanced_accuracy is the mean per-genre recall (classes are imbalanced), play_accuracy the majority "
            "vote over each test play's passages. digits: scikit-learn load_digits, stratified 80/20 split, 2x2 "
            "patches (a 4x4 grid for the 2-D retention). Chance: 1/6 and 1/10."
        ),
    )
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _chart(rows):
    tasks = sorted({r["task"] for r in rows})
    fig, ax = subplots(figsize=(6, 3.5))
    width = 0.35
    for i, arch in enumerate(("retnet", "transformer")):
        vals = [next(r["accuracy"] for r in rows if r["task"] == t and r["arch"] == arch) for t in tasks]
        ax.bar([j + i * width for j in range(len(tasks))], vals, width, label=arch)
    ax.set_xticks([j + width / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    return fig


def _steps(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        task, _, n = part.partition("=")
        out[task] = int(n)
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="genre and digits accuracy: retention vs attention of equal size")
    p.add_argument("--tasks", nargs="+", choices=("genre", "digits"), default=["digits", "genre"])
    p.add_argument("--steps", type=_steps, default=None, help="per-task steps, e.g. genre=400,digits=800")
    p.add_argument("--seed", type=int, default=0)
    add_threads(p, 2)
    p.add_argument("--quiet", action="store_true")
    add_out_dir(p)
    p.set_defaults(func=run)
