"""``retnet bench state-memory``: recurrent decoding memory does not grow with the number of generated tokens.

Two parts. (1) The recurrent state's size per layer for every preset (float32 ``[B, H, Dk, Dv]``, from the
config, checked against a real :class:`RetNetState` for the measured model). (2) For one model, the process
peak RSS after N generated tokens for each N (default 100 and 10,000), each run in a fresh subprocess so the
peaks are independent: greedy decoding with :func:`retnet.generation.stream_generate`, one recurrent step per
token. The goal: peak RSS after 10,000 tokens within 2% of that after 100.

With ``--peers``, instead: the decode state's bytes vs context (batch 1, float32) for RetNet and the baselines
of :mod:`retnet_benchmarks.peers` (Llama, Mamba, Mamba-2, RWKV), each sized to the preset's parameter count;
every model's fixed and per-token bytes are measured on its real cache after prefills of two lengths.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.measure import current_rss, peak_rss
from retnet_benchmarks.options import add_out_dir, add_threads, positive_int
from retnet_benchmarks.report import markdown_table, subplots, write_report

GOAL_PERCENT = 2.0


def decode_once(preset: str, tokens: int, prompt_len: int, batch_size: int, threads: int, seed: int) -> dict:
    """Build the model, prefill a random prompt, decode ``tokens`` tokens; memory figures of this process."""
    import torch

    from retnet.generation import stream_generate
    from retnet.models import RetNetConfig, RetNetForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = RetNetConfig.preset(preset)
    model = RetNetForCausalLM(config).eval()
    prompt = torch.randint(0, config.vocab_size, (batch_size, prompt_len))
    out = torch.empty(batch_size, tokens, dtype=torch.long)  # the generated ids themselves (8 bytes per token)
    rss_before = current_rss() // 1024
    stream = stream_generate(model, prompt, max_new_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    count = 0
    for i, token in enumerate(stream):
        out[:, i] = token
        count += 1
    seconds = time.perf_counter() - start
    return {
        "tokens": count,
        "state_bytes": stream.state.nbytes(),
        "state_layer_bytes": int(stream.state.layers[0].numel() * stream.state.layers[0].element_size()),
        "rss_before_decode_kib": rss_before,
        "rss_end_kib": current_rss() // 1024,
        "peak_rss_kib": peak_rss() // 1024,
        "seconds": seconds,
        "parameters": model.num_parameters(),
    }


def state_table(batch_size: int = 1) -> list[dict[str, Any]]:
    """State bytes per layer and in total for every preset (float32)."""
    from retnet.models import PRESETS, RetNetConfig

    rows = []
    for name in PRESETS:
        c = RetNetConfig.preset(name)
        per_layer = c.state_nbytes_per_layer(batch_size)
        rows.append(
            {
                "preset": name,
                "layers": c.num_layers,
                "heads": c.num_heads,
                "Dk x Dv": f"{c.key_head_dim} x {c.value_head_dim}",
                "state_bytes_per_layer": per_layer,
                "state_MiB_total": per_layer * c.num_layers / 2**20,
                # A float32 KV cache holds 2 * hidden * 4 bytes per token and layer.
                "kv_cache_equal_at_tokens": per_layer // (2 * c.hidden_size * 4 * batch_size),
            }
        )
    return rows


def peer_state_rows(preset: str, models: list[str], contexts: list[int]) -> list[dict[str, Any]]:
    """One row per model: parameters, measured fixed and per-token state bytes, MiB at each context.

    RetNet's variants (gated, hybrid, YOCO) are built at the preset's size by ``baseline.variant_config``, the
    peers by the registry; every state is measured on the real cache after prefills of 2 and 5 tokens."""
    import dataclasses

    import torch

    from retnet.models import RetNetConfig, RetNetForCausalLM
    from retnet_benchmarks.baseline import VARIANTS, variant_config
    from retnet_benchmarks.peers import build_baseline

    rc = RetNetConfig.preset(preset)
    rows = []
    for name in models:
        if name in VARIANTS:
            torch.manual_seed(0)
            model = RetNetForCausalLM(RetNetConfig(**variant_config(name, dataclasses.asdict(rc)))).eval()
            with torch.no_grad():
                sizes = [model.model(torch.zeros(1, n, dtype=torch.long), use_cache=True)[1].nbytes() for n in (2, 5)]
            per_token = (sizes[1] - sizes[0]) // 3
            info = {"class": "RetNetForCausalLM", "params": model.num_parameters()}
            info |= {"state_bytes_fixed": sizes[0] - 2 * per_token, "state_bytes_per_token": per_token}
        else:
            model, info = build_baseline(name, rc)
        del model
        row = {"model": name, "class": info["class"], "params": info["params"]}
        row["solved width"] = ", ".join(f"{k} {v}" for k, v in info.get("free_width", {}).items()) or "-"
        row |= {"state_bytes_fixed": info["state_bytes_fixed"], "state_bytes_per_token": info["state_bytes_per_token"]}
        for c in contexts:
            row[f"MiB_at_{c}"] = (info["state_bytes_fixed"] + c * info["state_bytes_per_token"]) / 2**20
        rows.append(row)
        print(
            f"{name}: {row['params']:,} parameters, state {row['state_bytes_fixed']:,} B"
            f" + {row['state_bytes_per_token']:,} B/token",
            file=sys.stderr,
        )
    return rows


def run_peers(args: argparse.Namespace) -> int:
    """``--peers``: state bytes vs context for RetNet and its peers; report ``<--name>`` (peers_state_memory)."""
    import os

    from retnet_benchmarks.peers import REFERENCE_PATH_NOTE

    load = os.getloadavg()
    rows = peer_state_rows(args.preset, args.peers, args.peer_contexts)
    by = {r["model"]: r for r in rows}
    summary: dict[str, Any] = {"preset": args.preset, "batch": 1, "dtype": "float32"}
    if "retnet" in by:
        for name, r in by.items():
            if name != "retnet" and r["state_bytes_per_token"] == 0:
                summary[f"retnet state / {name} state"] = round(
                    by["retnet"]["state_bytes_fixed"] / r["state_bytes_fixed"], 2
                )
            elif name != "retnet":
                equal = by["retnet"]["state_bytes_fixed"] / r["state_bytes_per_token"]
                summary[f"{name} cache equals the retnet state at (tokens)"] = round(equal)
    notes = (
        "Bytes of each model's decode state at batch 1, float32: RetNet's retention states; Llama's KV cache "
        "(`DynamicCache`); Mamba's and Mamba-2's convolution + SSM states (`DynamicCache` linear-attention "
        "layers); RWKV's five `[B, d, layers]` tensors. Fixed and per-token bytes are measured on the real "
        "caches after prefills of 2 and 5 tokens (random weights, `transformers` "
        "classes sized to RetNet's parameter count: same width, depth and vocabulary, one inner width solved); "
        "the columns `MiB_at_N` are fixed + N x per-token. " + REFERENCE_PATH_NOTE + " Sizes do not depend on "
        "that: the fast kernels keep the same states. Load average (1/5/15 min) at the start: "
        f"{'/'.join(f'{x:.1f}' for x in load)}; byte counts do not depend on the machine's load."
    )
    chart = None if args.no_chart else _peers_chart(rows, args.peer_contexts)
    paths = write_report(
        args.name or "peers_state_memory",
        title=f"Decode state bytes vs context: RetNet and its peers (preset {args.preset}, equal parameters)",
        rows=rows,
        out_dir=args.out_dir,
        summary=summary,
        notes=notes,
        chart=chart,
    )
    print(" ".join(str(p) for p in paths.values()))
    return 0


def _peers_chart(rows: list[dict[str, Any]], contexts: list[int]):
    from retnet_benchmarks.report import style_log_axes

    fig, ax = subplots(figsize=(7, 4.5))
    for r in rows:
        ax.plot(
            contexts,
            [r[f"MiB_at_{c}"] for c in contexts],
            "--s" if r["state_bytes_per_token"] else "-o",
            label=r["model"],
        )
    style_log_axes([ax], "context length (tokens)", ["decode state (MiB, batch 1, float32)"])
    ax.set_title("Decode state vs context, equal parameter counts")
    fig.tight_layout()
    return fig


def run(args: argparse.Namespace) -> int:
    if args.peers:
        return run_peers(args)
    from retnet.models import RetNetConfig

    config = RetNetConfig.preset(args.preset)
    cases = [
        Case(
            {"tokens": n},
            {
                "preset": args.preset,
                "tokens": n,
                "prompt_len": args.prompt_len,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "seed": args.seed,
            },
        )
        for n in args.tokens
    ]

    def to_row(case: Case, res: dict[str, Any]) -> dict[str, Any]:
        if "error" in res:  # every count is needed for the growth figure: no report without it
            raise RuntimeError(f"state-memory decoding subprocess ({case.key['tokens']} tokens) failed: {res['error']}")
        if res["state_layer_bytes"] != config.state_nbytes_per_layer(args.batch_size):
            raise RuntimeError("measured state size differs from RetNetConfig.state_nbytes_per_layer")
        return {
            "preset": args.preset,
            "generated_tokens": res["tokens"],
            "peak_rss_MiB": res["peak_rss_kib"] / 1024,
            "rss_before_decode_MiB": res["rss_before_decode_kib"] / 1024,
            "rss_end_MiB": res["rss_end_kib"] / 1024,
            "state_bytes": res["state_bytes"],
            "tokens_per_s": res["tokens"] / res["seconds"] if res["seconds"] > 0 else None,
        }

    def progress(row: dict[str, Any]) -> None:
        print(
            f"{row['generated_tokens']} tokens: peak RSS {row['peak_rss_MiB']:.1f} MiB, state {row['state_bytes']} B, "
            f"{row['tokens_per_s']:.0f} tok/s",
            file=sys.stderr,
        )

    # a fresh interpreter per count, so each peak RSS is its own; no timeout
    runs = run_cases(
        args,
        "retnet_benchmarks.bench_state_memory:decode_once",
        cases,
        progress=progress,
        timeout_s=None,
        to_row=to_row,
    )
    first, last = runs[0], runs[-1]
    growth = 100.0 * (last["peak_rss_MiB"] - first["peak_rss_MiB"]) / first["peak_rss_MiB"]
    presets = state_table(args.batch_size)
    summary = {
        "model": f"{args.preset} ({config.num_parameters():,} parameters, float32, batch {args.batch_size})",
        "torch threads in the decoding subprocesses": args.threads,
        f"peak RSS after {first['generated_tokens']} tokens (MiB)": round(first["peak_rss_MiB"], 1),
        f"peak RSS after {last['generated_tokens']} tokens (MiB)": round(last["peak_rss_MiB"], 1),
        "peak RSS growth (%)": round(growth, 3),
        f"goal: growth < {GOAL_PERCENT}%": abs(growth) < GOAL_PERCENT,
        "state bytes (all layers) constant": len({r["state_bytes"] for r in runs}) == 1,
        "state bytes per layer, measured model": config.state_nbytes_per_layer(args.batch_size),
    }
    notes = (
        "Each row is a fresh subprocess: build the model (random weights), prefill a random prompt of "
        f"{args.prompt_len} tokens, then greedy recurrent decoding, one step per token; peak RSS is the "
        "process high-water mark (VmHWM), so it includes the model and the PyTorch runtime.\n\n"
        f"## Recurrent state per layer (float32, batch {args.batch_size})\n\n"
        "A Transformer's KV cache grows by `2 * hidden * bytes` per token and layer; RetNet's state is fixed. "
        "`kv_cache_equal_at_tokens`: the context length at which a float32 KV cache of the same width reaches "
        "the state's size.\n\n" + markdown_table(presets)
    )
    chart = _chart(presets, runs) if not args.no_chart else None
    paths = write_report(
        "state-memory",
        title="RetNet recurrent decoding memory vs generated tokens",
        rows=runs,
        out_dir=args.out_dir,
        summary=summary,
        notes=notes,
        chart=chart,
    )
    print(" ".join(str(p) for p in paths.values()))
    return 0


def _chart(presets: list[dict[str, Any]], runs: list[dict[str, Any]]):
    fig, (a, b) = subplots(1, 2, figsize=(11, 4))
    a.bar([p["preset"] for p in presets], [p["state_bytes_per_layer"] / 2**20 for p in presets], color="tab:blue")
    a.set_yscale("log")
    a.set_ylabel("MiB per layer (float32, batch 1)")
    a.set_title("Recurrent state per layer")
    labels = [f"{r['generated_tokens']:,}" for r in runs]
    b.bar(labels, [r["peak_rss_MiB"] for r in runs], color="tab:green")
    for i, r in enumerate(runs):
        b.text(i, r["peak_rss_MiB"], f"{r['peak_rss_MiB']:.1f}", ha="center", va="bottom")
    b.set_xlabel("generated tokens")
    b.set_ylabel("process peak RSS (MiB)")
    b.set_title(f"Decoding, preset {runs[0]['preset']}")
    fig.tight_layout()
    return fig


def _token_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if len(counts) < 2 or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"needs at least two distinct positive counts, got {text!r}")
    return counts


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "state-memory",
        help="recurrent state size per preset; peak RSS after few vs many generated tokens",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    from retnet.models import PRESETS

    p.add_argument("--preset", default="small", choices=list(PRESETS), help="model preset to decode with")
    p.add_argument(
        "--tokens", type=_token_counts, default=[100, 10000], help="generated-token counts, one subprocess each"
    )
    p.add_argument("--prompt-len", type=positive_int, default=16, help="prompt length (default 16)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    add_threads(p, 1, "torch threads in the subprocess")
    p.add_argument("--seed", type=int, default=0)
    add_out_dir(p)
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    from retnet_benchmarks.baseline import VARIANTS
    from retnet_benchmarks.peers import BASELINES

    p.add_argument(
        "--peers",
        nargs="+",
        choices=(*VARIANTS, *BASELINES),
        default=None,
        help="instead: decode state bytes vs context for these models at the preset's size",
    )
    p.add_argument(
        "--peer-contexts",
        type=_token_counts,
        default=[1024, 4096, 16384, 65536, 262144],
        help="contexts of the --peers table (comma-separated)",
    )
    p.add_argument("--name", default=None, help="report name with --peers (default peers_state_memory)")
    p.set_defaults(func=run)
