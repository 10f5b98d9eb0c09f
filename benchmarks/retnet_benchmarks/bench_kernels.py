"""``retnet bench kernels``: our fused retention kernels vs fla's ``chunk_retention`` vs SDPA (FlashAttention).

Times forward and forward+backward (bf16, ``triton.testing.do_bench`` medians) side by side in one run, plus
one decoding step for a batch of states against the memory-bandwidth floor. ``--check`` instead runs the
bf16 correctness check at real head sizes and lengths against the float32 PyTorch reference. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
from typing import Any

from retnet_benchmarks.options import add_out_dir
from retnet_benchmarks.report import subplots, write_report

CHECK_TOL = 5e-3
CHECK_BATCH, CHECK_HEADS = 2, 4
METHODS = ("ours", "fla", "sdpa")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("kernels", help="fused retention kernels vs fla chunk_retention vs SDPA (CUDA)")
    p.add_argument("--check", action="store_true", help="bf16 correctness at real sizes instead of timings")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256], help="head dims (Dk = Dv)")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--decode-batch", type=int, default=64, help="states in the decoding-step measurement")
    add_out_dir(p, "--out")
    p.set_defaults(func=run)


def _positive(args: argparse.Namespace) -> None:
    from retnet.cli.errors import CLIError

    for name in ("batch", "heads", "decode_batch"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for d in args.dims:
        if not 1 <= d <= 256:
            raise CLIError(f"--dims values must be in 1..256 (the kernels' limit), got {d}")
    for t in args.lengths:
        if t < 1:
            raise CLIError(f"--lengths values must be >= 1, got {t}")


def run(args: argparse.Namespace) -> int:
    from retnet_benchmarks import kernels_gpu as kg

    _positive(args)
    kg.require_cuda()
    if args.check:
        return _run_check(args, kg)
    fla = kg.load_fla() if "fla" in args.methods else None
    rows: list[dict[str, Any]] = []
    for D in args.dims:
        for T in args.lengths:
            rows += kg.time_methods(args.batch, args.heads, D, T, args.methods, fla)
            print(*(f"{r['method']} D={D} T={T}: {r.get('fwd_ms')} / {r.get('fwdbwd_ms')} ms" for r in rows[-3:]))
    decode = kg.time_decode(args.decode_batch, args.heads, 128)
    summary = kg.summarize(rows, decode)
    notes = (
        f"bf16, B={args.batch}, H={args.heads}, fixed (RetNet) decay; medians of `triton.testing.do_bench`. "
        "`ours` = `retnet.ops.kernels.chunk_retention`; `fla` = `fla.ops.retention.chunk_retention`"
        + (" (not installed: skipped)" if "fla" in args.methods and fla is None else "")
        + "; `sdpa` = `torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (FlashAttention backend).\n\n"
        + "Decoding step: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in decode.items())
    )  # fmt: skip
    write_report(
        "kernels",
        title="Fused retention kernels vs fla chunk_retention vs SDPA",
        rows=rows,
        out_dir=args.out,
        columns=["method", "D", "T", "fwd_ms", "fwdbwd_ms", "note"],
        summary=summary,
        notes=notes,
        chart=chart(rows),
    )
    for k, v in summary.items():
        print(f"{k}: {v:.3f}")
    return 0


def _run_check(args: argparse.Namespace, kg) -> int:
    """Real head sizes and lengths; B = 2, H = 4 keep the float32 PyTorch reference within GPU memory."""
    import torch

    rows = []
    for D in args.dims:
        for T in args.lengths:
            for gated in (False, True):
                try:
                    rows.append(kg.check_case(CHECK_BATCH, T, CHECK_HEADS, D, gated, pad=min(T - 1, 37)))
                except torch.cuda.OutOfMemoryError:
                    rows.append({"B": CHECK_BATCH, "T": T, "H": CHECK_HEADS, "D": D, "gated": gated, "note": "OOM"})
                torch.cuda.empty_cache()
                print(rows[-1])
    rows.append(kg.check_decode(args.decode_batch, args.heads, 128))
    worst = max((v for r in rows for k, v in r.items() if isinstance(v, float)), default=float("nan"))
    if any("note" in r for r in rows):
        worst = float("inf")  # a case that could not run is a failed check
    summary = {"worst relative RMS error": worst, f"all below {CHECK_TOL}": worst < CHECK_TOL}
    write_report(
        "kernels_check",
        title="Fused retention kernels: bf16 vs float32 reference (relative RMS error)",
        rows=rows,
        out_dir=args.out,
        summary=summary,
        notes=f"B={CHECK_BATCH}, H={CHECK_HEADS}, first row left-padded. Inputs rounded to bf16 once; the reference "
        "is `retention(mode='chunkwise')` in float32 on the same values (recurrent form for the decoding row). "
        "Gradients of o and the final state against random weights.",
    )
    print(f"worst relative RMS error {worst:.3g} (tolerance {CHECK_TOL})")
    return 0 if worst < CHECK_TOL else 1


def chart(rows: list[dict[str, Any]]):
    """Forward+backward time vs length, one panel per head dim, log-log."""
    dims = sorted({r["D"] for r in rows})
    fig, axes = subplots(1, len(dims), figsize=(6 * len(dims), 4), squeeze=False)
    for ax, D in zip(axes[0], dims):
        for method in METHODS:
            pts = [(r["T"], r["fwdbwd_ms"]) for r in rows if r["D"] == D and r["method"] == method and "fwdbwd_ms" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set(xscale="log", yscale="log", xlabel="T", ylabel="forward+backward ms", title=f"D = {D}")
        ax.legend()
    fig.tight_layout()
    return fig
