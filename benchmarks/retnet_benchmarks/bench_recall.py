"""``retnet bench recall``: multi-query associative recall accuracy vs sequence length, per architecture.

Trains RetNet, gated RetNet, a hybrid (gated retention + softmax attention), YOCO and the baselines of
:mod:`retnet_benchmarks.peers` (Llama with SDPA, Mamba, Mamba-2, RWKV, sized to RetNet's parameter count) on
MQAR generated on the fly (:mod:`retnet_benchmarks.mqar`), each with the same batches, steps, optimizer
(``retnet.training``'s parameter groups and schedule) and seed, then scores fresh sequences at every length.
The number of key-value pairs grows with the length (``length / 4``), so a fixed-size state must hold more
pairs at longer lengths while attention can look each pair up. CPU-sized by default (the recurrent peers'
reference paths make it long: see docs/benchmarks/recall.md for the measured times); ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from retnet.models import RetNetConfig, RetNetForCausalLM
from retnet.training.optim import param_groups
from retnet.training.schedule import warmup_cosine
from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.measure import TimeBudget, check_model_minutes
from retnet_benchmarks.mqar import MQARTask, recall_accuracy
from retnet_benchmarks.options import add_model_minutes, add_out_dir, add_threads, positive_ints
from retnet_benchmarks.peers import BASELINES, RECURRENT, REFERENCE_PATH_NOTE, build_trainable
from retnet_benchmarks.report import subplots, write_report

VARIANTS = ("retnet", "gated", "hybrid", "yoco", *BASELINES)
# the options a model's training and evaluation read (passed to each worker process)
CASE_SETTINGS = (
    "steps", "batch_tokens", "lengths", "lr", "d_model", "layers", "heads",
    "eval_batches", "eval_size", "seed", "model_minutes", "verbose",
)  # fmt: skip


def build_model(name: str, task: MQARTask, d: int, layers: int, heads: int, seed: int = 0) -> torch.nn.Module:
    """One of :data:`VARIANTS` at width ``d``; the baselines come from the peer registry, sized to RetNet."""
    base = dict(
        vocab_size=task.vocab_size, hidden_size=d, num_layers=layers, num_heads=heads, value_dim=2 * d, ffn_dim=2 * d
    )
    if name in BASELINES:
        return build_trainable(name, RetNetConfig(**base), seed)
    overrides = {
        "retnet": {},
        "gated": {"gated": True},
        # Attention in every 2nd layer (the hybrid's sweet spot is ~1 in 4-8 at scale; 2 layers leave one).
        "hybrid": {"block_types": "GA" if layers % 2 == 0 else "G" * (layers - 1) + "A"},
        "yoco": {"architecture": "yoco"},
    }[name]
    return RetNetForCausalLM(RetNetConfig(**base, **overrides))


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def train_and_eval(name: str, args: argparse.Namespace, task: MQARTask) -> dict[str, Any]:
    """Train one variant on mixed lengths; return its accuracy at every length."""
    torch.manual_seed(args.seed)
    model = build_model(name, task, args.d_model, args.layers, args.heads, args.seed)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.98))
    schedule = warmup_cosine(opt, warmup_steps=max(1, args.steps // 10), total_steps=args.steps, min_lr_ratio=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    lengths = args.lengths
    model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    curve: list[list[float]] = []  # [step, mean loss of the last 20 steps], ten points
    for step in range(args.steps):
        check_model_minutes(args.model_minutes, t0, step, args.steps)
        seq_len = lengths[step % len(lengths)]
        # Same number of tokens per step at every length.
        batch = max(1, args.batch_tokens // seq_len)
        ids, labels = task.batch(batch, seq_len, gen)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, args.steps // 10) == 0:
            curve.append([step + 1, round(sum(losses[-20:]) / len(losses[-20:]), 4)])
            if args.verbose:
                print(f"  {name} step {step + 1}/{args.steps} loss {curve[-1][1]:.3f}", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    acc: dict[int, float] = {}
    with torch.no_grad():
        for seq_len in lengths:
            correct = total = 0
            for _ in range(args.eval_batches):
                ids, labels = task.batch(args.eval_size, seq_len, eval_gen)
                c, t = recall_accuracy(model(input_ids=ids).logits, labels)
                correct, total = correct + c, total + t
            acc[seq_len] = correct / total
    return {
        "model": name,
        "parameters": num_parameters(model),
        "train_s": round(train_s, 1),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        **{f"acc@{n}": round(a, 4) for n, a in acc.items()},
        "loss_curve": curve,
    }


def recall_case(model: str, key_vocab: int, value_vocab: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One model's row (run by the harness, in a worker process unless ``--in-process``); a model that cannot
    train or evaluate gets an ``error`` row, the same text either way, instead of ending the run."""
    try:
        return train_and_eval(model, argparse.Namespace(**settings), MQARTask(key_vocab, value_vocab))
    except Exception as e:  # noqa: BLE001 - recorded in the report, the other models still run
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def _progress(row: dict[str, Any]) -> str:
    return f"{row['model']}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("model", "loss_curve"))


def chart(rows: list[dict[str, Any]], lengths: list[int]):
    fig, ax = subplots(figsize=(6, 4))
    for r in rows:
        if "error" in r:
            continue
        ax.plot(lengths, [r[f"acc@{n}"] for n in lengths], marker="o", label=r["model"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (key-value pairs = length / 4)")
    ax.set_ylabel("recall accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Multi-query associative recall")
    if ax.lines:  # every row an error: no curves to name
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def run(args: argparse.Namespace) -> int:
    from retnet.cli.errors import CLIError

    if args.quick:
        args.steps, args.lengths, args.eval_batches, args.eval_size = min(args.steps, 30), [16, 32], 1, 16
        args.batch_tokens = min(args.batch_tokens, 512)
    if any(n < 8 or n % 4 for n in args.lengths):
        raise CLIError(f"--lengths must be multiples of 4 and >= 8, got {args.lengths}")
    bad = sorted(set(args.models) - set(VARIANTS))
    if bad:
        raise CLIError(f"--models: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    task = MQARTask(key_vocab=max(args.key_vocab, max(args.lengths) // 4), value_vocab=args.value_vocab)
    workers = max(1, min(args.workers, len(args.models)))
    settings = {k: getattr(args, k) for k in CASE_SETTINGS}
    cases = [
        Case({"model": name}, {"model": name, **dataclasses.asdict(task), "settings": settings})
        for name in sorted(args.models, key=VARIANTS.index)  # the report's order
    ]
    rows = run_cases(
        args,
        "retnet_benchmarks.bench_recall:recall_case",
        cases,
        progress=_progress,
        timeout_s=None,
        budget=TimeBudget(args.max_minutes),
        threads=max(1, args.threads // workers),  # the threads in all, split between the workers
        workers=workers,
    )
    summary = {
        "task": f"MQAR, {task.key_vocab} keys / {task.value_vocab} values, pairs = length/4, every key queried",
        "training": f"{args.steps} steps x {args.batch_tokens} tokens, lengths {args.lengths} in turn, lr {args.lr}",
        "models": f"d={args.d_model}, {args.layers} layers, {args.heads} heads; the baselines sized to RetNet's count",
    }
    summary.update(summarize(rows, max(args.lengths)))
    notes = (
        "Accuracy is the fraction of queried values predicted exactly (argmax), on fresh sequences. All models "
        "see the same batches (same seed) for the same number of steps, with `retnet.training`'s parameter groups "
        "(weight decay 0.1 on matrices) and warmup + cosine schedule; nothing is tuned per model, so a model "
        "that would learn the task with more steps or another learning rate can still score low here. "
        "Llama, Mamba, Mamba-2 and RWKV come from the peer registry (`transformers` models, RetNet's width and "
        "depth, one free width solved to RetNet's parameter count). "
        f"{REFERENCE_PATH_NOTE} Their train_s is therefore not representative; their accuracy is their own "
        "(same data, size, optimizer and steps), so the recall comparison is fair."
    )
    if not args.no_write:
        paths = write_report(
            args.report_name,
            title="Associative recall (MQAR) accuracy vs sequence length",
            rows=rows,
            out_dir=args.out_dir,
            columns=["model", "parameters", "train_s", "final_loss", *(f"acc@{n}" for n in args.lengths), "error"],
            summary=summary,
            notes=notes,
            chart=chart(rows, args.lengths),
        )
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def summarize(rows: list[dict[str, Any]], longest: int) -> dict[str, Any]:
    """The best model at the longest length, and each recurrent peer's accuracy there next to RetNet's."""
    key = f"acc@{longest}"
    ok = {r["model"]: r for r in rows if "error" not in r}
    s: dict[str, Any] = {}
    if ok:
        best = max(ok.values(), key=lambda r: r[key])
        s[f"best at length {longest}"] = f"{best['model']} ({best[key]:.3f})"
    for name in ("retnet", *RECURRENT):
        if name in ok:
            s[f"{name}_{key}"] = ok[name][key]
    return s


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recall", help="associative recall (MQAR) accuracy vs length per architecture")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(VARIANTS), help="comma-separated")
    p.add_argument(
        "--lengths", type=positive_ints, default=[16, 32, 64, 128], help="sequence lengths (default %(default)s)"
    )
    p.add_argument("--steps", type=int, default=2000, help="training steps per model (default %(default)s)")
    p.add_argument("--batch-tokens", type=int, default=1024, help="tokens per training step (default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--key-vocab", type=int, default=64)
    p.add_argument("--value-vocab", type=int, default=64)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--eval-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    add_threads(p, 2, "CPU threads in all")
    p.add_argument("--workers", type=int, default=2, help="models trained at once, one process each")
    p.add_argument("--quick", action="store_true", help="a smoke run (seconds): 30 steps, lengths 16 and 32")
    add_model_minutes(p)
    TimeBudget.add_argument(p)
    p.add_argument("--verbose", action="store_true", help="print the loss while training (with --in-process)")
    p.add_argument("--in-process", action="store_true", help="no worker processes, one model at a time (smoke test)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write docs/benchmarks/recall.*")
    add_out_dir(p)
    p.add_argument("--report-name", default="recall", help="file stem under --out-dir (default %(default)s)")
    p.set_defaults(func=run)
