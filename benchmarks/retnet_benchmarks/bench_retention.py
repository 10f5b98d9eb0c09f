"""``retnet bench retention``: time and peak memory of the three retention forms against sequence length.

Each (mode, T) runs :func:`retnet_benchmarks.retention_case.run_case` in a fresh process (through
:func:`retnet_benchmarks.measure.run_case`) so peak RSS is not contaminated by earlier cases. Cases whose
estimated memory exceeds a budget are not run (reported with the estimate); the recurrent form, a Python loop
per step, is capped by length. A second sweep over short lengths finds where ``mode="auto"`` should switch
from the parallel to the chunkwise form.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from retnet.cli.errors import CLIError
from retnet.models.directory import atomic_write_json
from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.report import DEFAULT_OUT_DIR, write_report

MODES = ("parallel", "chunkwise", "recurrent")
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 4, "float16": 4}  # compute dtype is float32 or float64
DEFAULT_LENGTHS = "512,1024,2048,4096,8192,16384"
DEFAULT_AUTO_LENGTHS = "64,128,192,256,384,512,768,1024"
MiB = 2**20
CASE_TARGET = "retnet_benchmarks.retention_case:run_case"


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values or any(x < 1 for x in values):
        raise CLIError(f"{name} must list positive integers, got {text!r}")
    return values


def estimate_peak_bytes(mode: str, T: int, spec: dict[str, Any]) -> int:
    """A deliberately generous estimate of a case's peak memory, used to skip cases that would not fit.

    parallel: about four ``[B, H, T, T]`` matrices are alive at once in backward (scores, decay, their
    product and its gradient; measured 3.3-4x at T = 2048-4096), so 5x plus the linear terms. recurrent:
    autograd keeps about six ``[B, H, Dk, Dv]`` tensors per step (measured ~1.5 MiB/step at H=8, 64x128).
    chunkwise: ``[B, H, T, C]`` score-sized tensors and one state per chunk.
    """
    B, H, Dk, Dv, C = spec["batch"], spec["heads"], spec["dk"], spec["dv"], spec["chunk_size"]
    s = DTYPE_BYTES[spec["dtype"]]
    linear = 12 * B * T * H * (2 * Dk + Dv) * s
    if mode == "parallel":
        return 5 * B * H * T * T * s + linear
    if mode == "recurrent":
        return 6 * B * H * Dk * Dv * s * T + linear
    return 8 * B * H * T * min(C, T) * s + 4 * B * H * Dk * Dv * s * (-(-T // C)) + linear


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (other processes share the machine), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _log(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _not_run(mode: str, T: int, est: int, args: argparse.Namespace) -> str | None:
    """Why case (mode, T) is not run: over the memory budget, over 80% of the memory free now, or the
    recurrent form's length cap; None to run it."""
    avail = _available_bytes()
    if est > args.mem_budget_gb * 2**30:
        return f"not run: estimated {est / 2**30:.1f} GiB > budget {args.mem_budget_gb:g} GiB"
    if avail is not None and est > 0.8 * avail:
        return f"not run: estimated {est / 2**30:.1f} GiB > 80% of available {avail / 2**30:.1f} GiB"
    if mode == "recurrent" and T > args.recurrent_max_len:
        return f"skipped: recurrent capped at T <= {args.recurrent_max_len}"
    return None


def scaling_rows(args: argparse.Namespace, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Forward+backward time and peak memory for every (mode, T), or why a case was not run.

    Each case runs in a fresh process; with ``--in-process`` in this one (fast, but peak memory then only
    counts what exceeds the high-water mark of earlier cases)."""
    cases = []
    for T in args.lengths:
        for mode in args.modes:
            est = estimate_peak_bytes(mode, T, base)
            key = {"mode": mode, "T": T, "est_peak_MiB": est / MiB}
            cases.append(Case(key, {"spec": {**base, "mode": mode, "T": T}}, skip=_not_run(mode, T, est, args)))

    def to_row(case: Case, res: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"mode": case.key["mode"], "T": case.key["T"], "status": "ok"}
        if case.skip:
            row["status"] = case.skip
        elif "error" in res:
            row["status"] = f"failed: {res['error']}"
        else:
            row.update(
                time_ms=res["time_ms"],
                time_ms_min=res["time_ms_min"],
                cpu_ms=res["cpu_ms"],
                tokens_per_s=base["batch"] * row["T"] / (res["time_ms"] / 1000),
                peak_MiB=res["peak_bytes"] / MiB,
                repeats=res["repeats"],
                load_avg=res["load_avg"],
            )
        row["est_peak_MiB"] = case.key["est_peak_MiB"]
        return row

    def progress(row: dict[str, Any]) -> None:
        ms = row.get("time_ms", float("nan"))
        _log(args, f"[retention] {row['mode']:9s} T={row['T']:6d} {row['status']} {ms:.1f} ms")

    return run_cases(
        args, CASE_TARGET, cases, progress=progress, timeout_s=args.case_timeout, threads=base["threads"], to_row=to_row
    )


def auto_rows(args: argparse.Namespace, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Parallel vs chunkwise at short lengths, forward+backward and forward only, measured side by side."""
    from retnet_benchmarks import retention_case

    rows = []
    for backward in (True, False):
        for T in args.auto_lengths:
            times = {}
            for mode in ("parallel", "chunkwise"):
                # Time only, so in this process: 2 x 2 x len(T) interpreter starts would cost minutes.
                res = retention_case.run_case({**base, "mode": mode, "T": T, "backward": backward})
                times[mode] = res.get("time_ms")
            p, c = times["parallel"], times["chunkwise"]
            rows.append(
                {
                    "pass": "fwd+bwd" if backward else "fwd",
                    "T": T,
                    "parallel_ms": p,
                    "chunkwise_ms": c,
                    "parallel_over_chunkwise": (p / c) if p and c else None,
                }
            )
            _log(
                args,
                f"[retention auto] {rows[-1]['pass']:7s} T={T:5d} parallel {p or 0:.2f} ms chunkwise {c or 0:.2f} ms",
            )
    return rows


def crossover(rows: list[dict[str, Any]], pass_name: str) -> int | None:
    """The largest measured T up to which parallel is never slower than chunkwise (None if it never is)."""
    best = None
    for r in sorted((r for r in rows if r["pass"] == pass_name), key=lambda r: r["T"]):
        ratio = r["parallel_over_chunkwise"]
        if ratio is None or ratio > 1:
            break
        best = r["T"]
    return best


def _find(rows: list[dict[str, Any]], mode: str, T: int, key: str) -> float | None:
    for r in rows:
        if r["mode"] == mode and r["T"] == T and r["status"] == "ok":
            return r[key]
    return None


def summarize(rows: list[dict[str, Any]], auto: list[dict[str, Any]], chunk_size: int) -> dict[str, Any]:
    """The issue's two goals and the auto-mode switch point."""
    from retnet.ops.retention import PARALLEL_MAX_LEN

    summary: dict[str, Any] = {}
    t4, t16 = _find(rows, "chunkwise", 4096, "time_ms"), _find(rows, "chunkwise", 16384, "time_ms")
    ratio = t16 / t4 if t4 and t16 else None
    summary["chunkwise time T=16384 / T=4096 (goal <= 4.5)"] = ratio if ratio else "n/a (needs both lengths)"
    summary["time goal met"] = "n/a" if ratio is None else ratio <= 4.5
    for key, label in (("time_ms_min", "fastest-pass"), ("cpu_ms", "CPU-time")):
        a, b = _find(rows, "chunkwise", 4096, key), _find(rows, "chunkwise", 16384, key)
        if a and b:  # less sensitive to other processes' load than the median wall time
            summary[f"chunkwise {label} ratio T=16384 / T=4096"] = b / a
    mc, mp = _find(rows, "chunkwise", 8192, "peak_MiB"), _find(rows, "parallel", 8192, "peak_MiB")
    est_p = next((r["est_peak_MiB"] for r in rows if r["mode"] == "parallel" and r["T"] == 8192), None)
    if mc is not None and mp:
        mem_ratio, basis = mc / mp, "measured"
    elif mc is not None and est_p:
        mem_ratio, basis = mc / est_p, "parallel estimated (not run)"
    else:
        mem_ratio, basis = None, "n/a"
    summary["chunkwise peak memory / parallel at T=8192 (goal < 15%)"] = (
        "n/a (needs T=8192)" if mem_ratio is None else f"{100 * mem_ratio:.1f}% ({basis})"
    )
    summary["memory goal met"] = "n/a" if mem_ratio is None else mem_ratio < 0.15
    if auto:
        for p in ("fwd+bwd", "fwd"):
            x = crossover(auto, p)
            summary[f"auto: parallel not slower than chunkwise up to T ({p})"] = "never" if x is None else x
        summary["PARALLEL_MAX_LEN during this run (auto: parallel for T <= max(it, chunk_size))"] = PARALLEL_MAX_LEN
        summary["chunk_size"] = chunk_size
    return summary


def _chart(rows: list[dict[str, Any]], auto: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if auto else 2, figsize=(15 if auto else 10, 4))
    for mode in MODES:
        ok = [r for r in rows if r["mode"] == mode and r["status"] == "ok"]
        if ok:
            xs = [r["T"] for r in ok]
            axes[0].plot(xs, [r["time_ms"] for r in ok], "o-", label=mode)
            axes[1].plot(xs, [r["peak_MiB"] for r in ok], "o-", label=mode)
    for ax, label in zip(axes[:2], ("forward+backward time (ms, median)", "peak RSS increase (MiB)")):
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if ys:
            ax.set_xscale("log", base=2)
            ax.legend()
        if any(y > 0 for y in ys):
            ax.set_yscale("log")
    if auto:
        for p in ("fwd+bwd", "fwd"):
            pts = [r for r in auto if r["pass"] == p and r["parallel_over_chunkwise"]]
            axes[2].plot([r["T"] for r in pts], [r["parallel_over_chunkwise"] for r in pts], "o-", label=p)
        axes[2].axhline(1.0, color="grey", lw=1)
        axes[2].set_xlabel("sequence length T")
        axes[2].set_ylabel("parallel time / chunkwise time")
        axes[2].set_title("where auto should switch")
        axes[2].grid(True, alpha=0.3)
        axes[2].legend()
    fig.tight_layout()
    return fig


NOTES = """\
Method: each (mode, T) runs in a fresh Python process. It builds the inputs and runs one toy-size pass (library
and autograd initialisation), takes `ru_maxrss` as its baseline, then runs one warm-up pass and `repeats` timed
passes of `retention(q, k, v, log_decay, mode=...)` with `o.backward(grad)`. `time_ms` is the median wall time
(`time_ms_min` the fastest, `cpu_ms` the median process CPU time); `peak_MiB` is the peak RSS increase over the
baseline (it includes memory the allocator keeps after freeing, i.e. what the OS had to provide).
`est_peak_MiB` is the conservative estimate used to decide whether a case may run. The decay is the official
fixed schedule; q, k, v require gradients, the decay does not.

Contention: the machine's 2 cores are shared with other sessions running tests, training and benchmarks
(benchmarks are meant to take turns under `flock /tmp/retnet-bench.lock`). `load_avg` is the 1-minute load
average during each case (2.0 = both cores busy): above 2, wall times are inflated by waiting for a core.
Medians over repeats damp, but do not remove, that noise; `cpu_ms` (process CPU time) is less affected.
"""


def run(args: argparse.Namespace) -> int:
    args.lengths = _int_list(args.lengths, "--lengths")
    args.auto_lengths = _int_list(args.auto_lengths, "--auto-lengths") if args.auto_lengths else []
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        raise CLIError(f"--modes must be a comma-separated subset of {','.join(MODES)}, got {bad or args.modes}")
    for name in ("batch", "heads", "dk", "dv", "chunk_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.mem_budget_gb <= 0:
        raise CLIError(f"--mem-budget-gb must be > 0, got {args.mem_budget_gb}")
    base = {
        "batch": args.batch,
        "heads": args.heads,
        "dk": args.dk,
        "dv": args.dv,
        "dtype": args.dtype,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "backward": True,
        "max_seconds": args.max_case_seconds,
    }
    import torch

    torch.set_num_threads(args.threads)  # so the report's machine line shows the threads the cases used
    rows = scaling_rows(args, base)
    auto = auto_rows(args, base) if args.auto_lengths else []
    summary = summarize(rows, auto, args.chunk_size)
    notes = NOTES + (f"\n{args.note.strip()}\n" if args.note else "")
    if auto:
        notes += '\n## Where `mode="auto"` should switch (parallel vs chunkwise, median ms)\n\n'
        notes += "Measured in one process, one after the other for each T (time only, no memory figures).\n\n"
        from retnet_benchmarks.report import markdown_table

        notes += markdown_table(auto)
    cfg = f"B={args.batch}, H={args.heads}, Dk={args.dk}, Dv={args.dv}, {args.dtype}, chunk {args.chunk_size}"
    paths = write_report(
        "retention",
        title=f"Retention forward+backward: time and peak memory vs length ({cfg})",
        rows=rows,
        out_dir=args.out_dir,
        columns=[
            "mode",
            "T",
            "status",
            "time_ms",
            "time_ms_min",
            "cpu_ms",
            "tokens_per_s",
            "peak_MiB",
            "est_peak_MiB",
            "repeats",
            "load_avg",
        ],
        summary=summary,
        notes=notes,
        chart=_chart(rows, auto),
    )
    if auto:  # keep the auto-switch sweep machine-readable next to the main rows
        data = json.loads(paths["json"].read_text())
        data["auto_switch_rows"] = auto
        atomic_write_json(paths["json"], data)
    for key, value in summary.items():
        print(f"{key}: {value}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("retention", help="time and peak memory of parallel / chunkwise / recurrent retention")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"comma-separated T values (default {DEFAULT_LENGTHS})")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated forms to run (default all three)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES), help="input dtype (default float32)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per case after one warm-up (default 3)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="where to write retention.{json,md,png}")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dk", type=int, default=64)
    p.add_argument("--dv", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch threads per case (default 2)")
    p.add_argument(
        "--mem-budget-gb", type=float, default=16.0, help="do not run cases estimated above this (default 16)"
    )
    p.add_argument(
        "--recurrent-max-len", type=int, default=4096, help="skip the recurrent form above this T (default 4096)"
    )
    p.add_argument(
        "--max-case-seconds",
        type=float,
        default=120.0,
        help="fewer repeats when a case's repeats would exceed this many seconds (default 120)",
    )
    p.add_argument("--case-timeout", type=float, default=1200.0, help="kill a case after this many seconds")
    p.add_argument(
        "--auto-lengths",
        default=DEFAULT_AUTO_LENGTHS,
        help=f"T values for the parallel-vs-chunkwise switch sweep; empty to skip (default {DEFAULT_AUTO_LENGTHS})",
    )
    p.add_argument("--in-process", action="store_true", help="run cases in this process (fast; peak memory less exact)")
    p.add_argument("--note", default="", help="a Markdown paragraph added to the report's notes")
    p.add_argument("--quiet", action="store_true", help="no per-case progress on stderr")
    p.set_defaults(func=run)
