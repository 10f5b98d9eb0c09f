"""``retnet bench encoder``: bidirectional encoder time and memory vs sequence length.

RetNet's bidirectional encoder in its parallel form (O(T^2)) and its linear two-pass chunkwise form, next to a
softmax-attention encoder of equal size (``torch.nn.TransformerEncoder``, SDPA inside). Forward + backward of
the whole classifier at batch 1; each case runs in a fresh process so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.measure import TimeBudget
from retnet_benchmarks.options import add_out_dir, add_threads
from retnet_benchmarks.report import subplots

ARCHS = ("retnet-parallel", "retnet-chunkwise", "transformer")
CASE_TIMEOUT_S = 3600.0


def encoder_case(arch: str, seq_len: int, batch: int, hidden: int, layers: int, heads: int, repeats: int) -> dict:
    """Time forward + backward of one classifier (called in a fresh process by ``run_isolated``)."""
    import torch

    from retnet.models.baselines import TransformerTextClassifier
    from retnet.models.encoder import EncoderConfig, RetNetForSequenceClassification

    torch.manual_seed(0)
    cfg = EncoderConfig(
        kind="text",
        num_labels=2,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        value_dim=2 * hidden,
        ffn_dim=2 * hidden,
        dropout=0.0,
    )
    if arch == "transformer":
        model, kw = TransformerTextClassifier(cfg, max_len=seq_len), {}
    else:
        model, kw = RetNetForSequenceClassification(cfg), {"mode": arch.split("-")[1]}
    ids = torch.randint(0, 256, (batch, seq_len))
    labels = torch.zeros(batch, dtype=torch.long)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=labels, **kw).loss.backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    return {
        "ms": ms,
        "tokens_per_s": batch * seq_len / (ms / 1e3),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def parallel_bytes_estimate(seq_len: int, batch: int, heads: int, layers: int) -> int:
    """Rough peak of the parallel form: ~6 live float32 [B, H, T, T] matrices per layer in backward."""
    return 6 * 4 * batch * heads * seq_len**2 * layers


def cases(args: argparse.Namespace) -> list[Case]:
    """Every architecture at each length; the parallel form skipped where its estimate exceeds the budget."""
    out = []
    for seq_len in args.lengths:
        for arch in args.archs:
            est = parallel_bytes_estimate(seq_len, args.batch, args.heads, args.layers)
            over = arch == "retnet-parallel" and est > args.memory_budget_gb * 2**30
            kwargs = dict(arch=arch, seq_len=seq_len, batch=args.batch, hidden=args.hidden, layers=args.layers)
            kwargs |= dict(heads=args.heads, repeats=args.repeats)
            skip = f"needs ~{est / 2**30:.0f} GB (> budget {args.memory_budget_gb} GB)" if over else None
            out.append(Case({"arch": arch, "seq_len": seq_len}, kwargs, skip))
    return out


def row_of(case: Case, res: dict[str, Any]) -> dict[str, Any]:
    """The report's row: times and the peak RSS above the post-import baseline, or why the case did not run."""
    row = dict(case.key)
    if "error" in res:
        row["skipped"] = res["error"].splitlines()[0][:200]
    else:
        row.update(
            ms=res["ms"],
            tokens_per_s=res["tokens_per_s"],
            peak_mb=(res["process_peak_rss"] - res["baseline_rss"]) / 2**20,
            parameters=res["parameters"],
        )
    return row


def _progress(row: dict[str, Any]) -> str:
    head = f"{row['arch']:18s} T={row['seq_len']:6d} "
    if "skipped" in row:
        return head + f"skipped: {row['skipped']}"
    return head + " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))


def run(args: argparse.Namespace) -> int:
    from retnet_benchmarks.report import write_report

    rows = run_cases(
        args,
        "retnet_benchmarks.bench_encoder:encoder_case",
        cases(args),
        progress=_progress,
        timeout_s=CASE_TIMEOUT_S,
        budget=TimeBudget(args.max_minutes),
        threads=args.threads,
        baseline_rss=True,
        to_row=row_of,
    )

    def ratio(arch: str, key: str, a: int, b: int) -> float | None:
        vals = {r["seq_len"]: r.get(key) for r in rows if r["arch"] == arch}
        return vals[b] / vals[a] if vals.get(a) and vals.get(b) else None

    lo, hi = min(args.lengths), max(args.lengths)
    summary = {
        f"{arch} {key} T={hi} / T={lo}": ratio(arch, key, lo, hi) for arch in args.archs for key in ("ms", "peak_mb")
    }
    summary["length ratio"] = hi / lo
    chart = _chart(rows, args.archs)
    paths = write_report(
        "encoder",
        title="Bidirectional encoder: forward+backward time and peak memory vs sequence length",
        rows=rows,
        columns=["arch", "seq_len", "ms", "tokens_per_s", "peak_mb", "parameters", "skipped"],
        summary=summary,
        out_dir=args.out_dir,
        chart=chart,
        notes=(
            f"Batch {args.batch}, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, float32, "
            f"median of {args.repeats} runs after a warm-up, each case in a fresh process (peak_mb is its peak RSS "
            "above the post-import baseline). The chunkwise form is linear in T; the parallel form and softmax "
            "attention are quadratic in time (SDPA avoids materialising the T x T matrix, so its memory grows slower)."
        ),
    )
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _chart(rows, archs):
    fig, axes = subplots(1, 2, figsize=(11, 4))
    for arch in archs:
        pts = [r for r in rows if r["arch"] == arch and "ms" in r]
        if pts:
            axes[0].plot([r["seq_len"] for r in pts], [r["ms"] for r in pts], marker="o", label=arch)
            axes[1].plot([r["seq_len"] for r in pts], [r["peak_mb"] for r in pts], marker="o", label=arch)
    for ax, label in zip(axes, ("forward+backward ms", "peak memory MB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("encoder", help="bidirectional encoder time/memory vs length (linear vs quadratic)")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    add_threads(p, 2)
    p.add_argument("--memory-budget-gb", type=float, default=8.0)
    TimeBudget.add_argument(p)
    add_out_dir(p)
    p.set_defaults(func=run)
