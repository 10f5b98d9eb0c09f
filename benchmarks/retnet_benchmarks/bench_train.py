"""``retnet bench train``: forward+backward tokens/s and peak memory vs sequence length.

RetNet in its parallel (O(T^2)) and chunkwise (O(T)) forms against Hugging Face ``LlamaForCausalLM`` with
SDPA attention, equal parameter counts, each optionally with activation checkpointing per decoder block
(``--checkpointing on|both``). ``--models`` also takes the recurrent peers of :mod:`retnet_benchmarks.peers`
(``mamba``, ``mamba2``, ``rwkv``: ``transformers`` models at RetNet's parameter count, training through their
CPU reference paths, mode ``hf-reference``), with Llama's loss and timing. Each case runs in a fresh process so
its peak memory is its own; the peak is reset after the model is built and warmed up, so it covers one
forward+backward.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from retnet.models import RetNetForCausalLM
from retnet.models.retnet import DEFAULT_CHECKPOINT_SEGMENT
from retnet.runtime.malloc import MALLOC_MODES
from retnet_benchmarks.baseline import TRAIN_25M, build_pair, build_retnet, count_parameters, variant_config
from retnet_benchmarks.baseline import VARIANTS as RETNET_VARIANTS
from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.measure import (
    GIB,
    TimeBudget,
    current_rss,
    median_time,
    peak_memory,
    pick_device,
    reset_peak_memory,
    time_steps,
)
from retnet_benchmarks.options import add_device, add_models, comma_choices, positive_ints
from retnet_benchmarks.peers import (
    RECURRENT,
    REFERENCE_PATH_NOTE,
    build_trainable,
    peer_config,
    peer_parameters,
    peers_note,
)
from retnet_benchmarks.report import DEFAULT_OUT_DIR, style_log_axes, write_report

MIB = 1024**2
PEER_MODE = "hf-reference"
VARIANTS = (
    ("retnet", "parallel"),
    ("retnet", "chunkwise"),
    *((variant, "chunkwise") for variant in RETNET_VARIANTS[1:]),  # gated, hybrid, YOCO
    ("llama", "sdpa"),
    *((peer, PEER_MODE) for peer in RECURRENT),
)
MODELS = tuple(dict.fromkeys(m for m, _ in VARIANTS))
MODES = tuple(dict.fromkeys(f for _, f in VARIANTS))
DEFAULT_MODELS = ("retnet", "llama")
PEER_NAMES = {"llama": "Llama", "mamba": "Mamba", "mamba2": "Mamba-2", "rwkv": "RWKV"}
VARIANT_NAMES = {"gated": "gated RetNet", "hybrid": "hybrid", "yoco": "YOCO"}
PEERS_HOW = (
    "built for training by `peers.build_trainable` (Mamba with transformers' `use_mambapy`: the `mambapy` "
    "parallel scan, transformers' own training fallback without CUDA kernels, in place of a per-token loop whose "
    "backward is quadratic in the length), with Llama's loss (`labels=ids`) and timing. Mamba's and Mamba-2's "
    "scans hold tensors of [T, inner, state] and [T, chunk, heads, state] elements: their cases are skipped where "
    "that estimate exceeds the memory budget."
)
CHECKPOINTING = {"off": (False,), "on": (True,), "both": (False, True)}


def parallel_scores_bytes(retnet_kwargs: dict[str, Any], batch: int, seq_len: int) -> int:
    """Rough bytes of the [T, T] score/decay matrices parallel retention keeps for backward (3 per layer)."""
    return 3 * retnet_kwargs["num_layers"] * retnet_kwargs["num_heads"] * batch * seq_len * seq_len * 4


def train_case(
    model: str,
    mode: str,
    retnet_config: dict[str, Any],
    batch: int,
    seq_len: int,
    warmup_len: int,
    steps: int,
    threads: int,
    device: str,
    seed: int = 0,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """Time forward+backward (runs inside a worker process); gradients are dropped between steps."""
    torch.set_num_threads(threads)
    dev = pick_device(device)
    rcfg = build_pair(retnet_config)[0]
    if model in RETNET_VARIANTS:  # at RetNet's size (the variants' FFN width solved)
        net = build_retnet(build_pair(variant_config(model, retnet_config))[0], seed)
    else:
        net = build_trainable(model, rcfg, seed)
    net = net.to(dev).train()
    if checkpointing:
        enable_checkpointing(net)
    gen = torch.Generator().manual_seed(seed)

    def make_step(length: int):
        ids = torch.randint(0, rcfg.vocab_size, (batch, length), generator=gen).to(dev)

        def step() -> None:
            if model in RETNET_VARIANTS:
                loss = net(ids, labels=ids, mode=mode).loss
            else:
                loss = net(input_ids=ids, labels=ids).loss
            loss.backward()
            net.zero_grad(set_to_none=True)

        return step

    time_steps(make_step(min(seq_len, warmup_len)), dev, 1, 0)
    rss_before = current_rss()
    reset_peak_memory(dev)
    times = time_steps(make_step(seq_len), dev, 0, steps)
    step_s = median_time(times)
    peak = peak_memory(dev)
    base = rss_before if dev.type == "cpu" else 0
    return {
        "model": model,
        "mode": mode,
        "checkpointing": checkpointing,
        "batch": batch,
        "seq_len": seq_len,
        "params": count_parameters(net),
        "step_s": step_s,
        "tokens_per_s": batch * seq_len / step_s,
        "memory_mib": peak / MIB,
        "activation_mib": (peak - base) / MIB,
        "step_times_s": times,
    }


def enable_checkpointing(net: torch.nn.Module) -> None:
    """Activation checkpointing per decoder block: RetNet's flag, or transformers' switch for Llama."""
    if isinstance(net, RetNetForCausalLM):
        net.model.gradient_checkpointing = True
        return
    net = net.model  # a baseline behind peers.CausalLM: the transformers model
    enable = getattr(net, "activation_checkpointing_enable", None) or net.gradient_checkpointing_enable
    enable()


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev = pick_device(args.device)
    retnet_kwargs = dict(TRAIN_25M)
    if args.tiny:
        retnet_kwargs = dict(
            vocab_size=256, hidden_size=64, num_layers=2, num_heads=2, value_dim=96, ffn_dim=96, chunk_size=16
        )
    rcfg, lcfg = build_pair(retnet_kwargs)
    rows = run_cases(
        args,
        "retnet_benchmarks.bench_train:train_case",
        cases(args, retnet_kwargs, str(dev)),
        progress=_progress,
        timeout_s=args.case_timeout,
        budget=TimeBudget(args.max_minutes),
    )
    summary = summarize(rows)
    summary["retnet_params"] = rcfg.num_parameters()
    for model in ("llama", *(m for m in RECURRENT if m in args.models)):
        summary[f"{model}_params"] = peer_parameters(model, rcfg)
    if any(m in RECURRENT for m in args.models):
        summary["peers_note"] = REFERENCE_PATH_NOTE
    write_report(
        args.name,
        title=title(args.models),
        rows=rows,
        out_dir=args.out_dir,
        columns=[
            "model",
            "mode",
            "checkpointing",
            "batch",
            "seq_len",
            "step_s",
            "tokens_per_s",
            "memory_mib",
            "activation_mib",
            "error",
        ],
        summary=summary,
        notes=notes(args, rcfg, lcfg, dev),
        chart=chart(rows),
    )
    return summary


def cases(args: argparse.Namespace, retnet_kwargs: dict[str, Any], device: str) -> list[Case]:
    """Every selected (model, mode) at each length, without and/or with checkpointing; cases whose estimated
    memory exceeds ``--memory-budget-gib`` are skipped with the reason."""
    variants = [(m, f) for m, f in VARIANTS if m in args.models and f in args.modes]
    out = []
    for seq_len in args.lengths:
        for (model, mode), ckpt in [(mm, c) for c in CHECKPOINTING[args.checkpointing] for mm in variants]:
            key = {"model": model, "mode": mode, "checkpointing": ckpt, "batch": args.batch, "seq_len": seq_len}
            kwargs = dict(key, retnet_config=retnet_kwargs, warmup_len=args.warmup_len, steps=args.steps)
            kwargs |= dict(threads=args.threads, device=device)
            out.append(Case(key, kwargs, _over_budget(args, retnet_kwargs, model, mode, ckpt, seq_len)))
    return out


def _over_budget(
    args: argparse.Namespace, retnet_kwargs: dict[str, Any], model: str, mode: str, ckpt: bool, seq_len: int
) -> str | None:
    """The skip reason where a case's estimated memory exceeds ``--memory-budget-gib``, else None."""
    if mode == "parallel":
        need, what = parallel_scores_bytes(retnet_kwargs, args.batch, seq_len), "parallel form's T x T matrices"
    elif model in ("mamba", "mamba2") and not ckpt:
        need, what = scan_bytes(model, retnet_kwargs, args.batch, seq_len), f"{PEER_NAMES[model]}'s scan tensors"
    else:
        return None
    if need <= args.memory_budget_gib * GIB:
        return None
    return f"skipped: {what} need ~{need / GIB:.0f} GiB > budget {args.memory_budget_gib:g} GiB"


def scan_bytes(model: str, retnet_kwargs: dict[str, Any], batch: int, seq_len: int) -> int:
    """Rough peak bytes of a peer's CPU scan in one forward+backward (0 for the others). Mamba (``mambapy``'s
    parallel scan) keeps about eight ``[B, inner, T, state]`` float32 tensors per layer; Mamba-2's chunked scan
    forms ``[B, T, chunk, heads, state]`` products, about 3 of them at the peak (both fitted to the peaks measured
    at 1024 and 4096 tokens, ~25M parameters)."""
    from retnet.models import RetNetConfig

    if model not in ("mamba", "mamba2"):
        return 0
    rcfg = RetNetConfig(**retnet_kwargs)
    cfg = peer_config(model, rcfg)
    if model == "mamba":
        return 8 * rcfg.num_layers * batch * cfg.intermediate_size * seq_len * cfg.state_size * 4
    return 3 * batch * seq_len * cfg.chunk_size * cfg.num_heads * cfg.state_size * 4


def title(models: list[str]) -> str:
    """The report's title: RetNet's forms (and the variants that ran) against the baselines that ran."""
    others = [PEER_NAMES[m] for m in MODELS if m in PEER_NAMES and m in models]
    variants = "".join(f", {VARIANT_NAMES[m]}" for m in MODELS if m in VARIANT_NAMES and m in models)
    return f"Training step (forward+backward): RetNet parallel / chunkwise{variants} vs " + (
        ", ".join(others) + " (HF transformers, same parameter count)"
        if any(m in RECURRENT for m in models)
        else "Llama (HF transformers, SDPA)"
    )


def _progress(row: dict[str, Any]) -> str:
    ckpt = " (checkpointed)" if row.get("checkpointing") else ""
    head = f"{row['model']:>6} {row['mode']:>9}{ckpt} T={row['seq_len']:>6}: "
    if "error" in row:
        return head + row["error"]
    return head + f"{row['tokens_per_s']:.0f} tok/s, peak {row['memory_mib']:.0f} MiB"


def _get(rows, model, mode, seq_len, checkpointing=False):
    for r in rows:
        key = (r["model"], r["mode"], r["seq_len"], bool(r.get("checkpointing")))
        if key == (model, mode, seq_len, checkpointing) and "error" not in r:
            return r
    return None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Chunkwise RetNet over Llama and over each peer (tokens/s, peak memory) per length, without and with
    checkpointing; the goals are the ones against Llama."""
    s: dict[str, Any] = {}
    lengths = sorted({r["seq_len"] for r in rows})
    for other, mode in (("llama", "sdpa"), *((p, PEER_MODE) for p in RECURRENT)):
        for ckpt, tag in ((False, ""), (True, "_checkpointed")):
            for T in lengths:
                c, o = _get(rows, "retnet", "chunkwise", T, ckpt), _get(rows, other, mode, T, ckpt)
                if c and o:
                    goal = " (goal >= 2)" if T == 8192 and other == "llama" else ""
                    s[f"chunkwise_over_{other}_tokens_per_s_{T}{tag}{goal}"] = c["tokens_per_s"] / o["tokens_per_s"]
                    goal = " (goal <= 0.75)" if T == 8192 and other == "llama" else ""
                    s[f"chunkwise_over_{other}_memory_{T}{tag}{goal}"] = c["memory_mib"] / o["memory_mib"]
    chunk = [r for r in (_get(rows, "retnet", "chunkwise", T) for T in lengths) if r]
    # memory added per extra token between consecutive lengths: constant when memory is linear in length
    slopes = [
        (b["seq_len"], (b["memory_mib"] - a["memory_mib"]) * 1024 / (b["seq_len"] - a["seq_len"]))
        for a, b in zip(chunk, chunk[1:])
        if a["seq_len"] >= 1024
    ]
    if len(slopes) >= 2:
        values = [v for _, v in slopes]
        s["chunkwise_peak_kib_per_extra_token"] = ", ".join(f"to {T}: {v:.0f}" for T, v in slopes)
        s["chunkwise_memory_linearity (max/min slope; 1 = linear)"] = max(values) / min(values)
    return s


def notes(args: argparse.Namespace, rcfg: Any, lcfg: Any, dev: torch.device) -> str:
    mem = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "peak RSS (VmHWM) of the case's own process"
    return f"""
- Models: RetNet d={rcfg.hidden_size}, {rcfg.num_layers} layers, {rcfg.num_heads} heads, d_v=ffn={rcfg.value_dim},
  chunk {rcfg.chunk_size}, vocab {rcfg.vocab_size} (bytes), {rcfg.num_parameters():,} parameters; Llama
  (`transformers.LlamaForCausalLM`, SDPA) d={lcfg.hidden_size}, {lcfg.num_hidden_layers} layers,
  {lcfg.num_attention_heads} heads, intermediate {lcfg.intermediate_size}. float32, training mode.
- One step = loss (cross-entropy over all positions) + backward, batch {args.batch}; median of {args.steps}
  steps after one warm-up step of min(T, {args.warmup_len}) tokens; no optimizer update.
- Memory: {mem}; the peak is reset after the warm-up, so it covers weights + one forward+backward
  (activations, gradients). `activation_mib` subtracts the resident memory just before the timed steps.
- Activation checkpointing (`checkpointing` column): RetNet's `gradient_checkpointing` flag, Llama's
  `transformers` switch; both keep only each decoder block's input and recompute the block in backward.
  RetNet recomputes its retention blocks in segments of {DEFAULT_CHECKPOINT_SEGMENT} tokens, each continuing from
  the previous segment's state, so the backward pass holds one segment's intermediates at a time; attention must
  recompute a whole block (each query reads every earlier key).
- Parallel RetNet is skipped where its T x T matrices would exceed --memory-budget-gib
  ({args.memory_budget_gib:g} GiB); the machine is shared.
- Each case runs in a fresh process with {args.threads} torch threads, under `flock /tmp/retnet-bench.lock` on a
  machine shared with other jobs; the figures carry that noise.
- glibc setting of every case (`--malloc {args.malloc}`): {MALLOC_NOTE[args.malloc]}
""" + peers_note(args.models, f"mode `{PEER_MODE}`", PEERS_HOW)


MALLOC_NOTE = {
    "retain": "large blocks served from the heap and kept for the next step (fastest steps; freed holes stay "
    "resident, so peak RSS exceeds the live tensors).",
    "return": "blocks of 1 MiB or more mapped afresh and returned when freed (peak RSS follows the live tensors; "
    "steps pay page faults).",
}


def chart(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (model, mode), ckpt in [(mm, c) for c in (False, True) for mm in VARIANTS]:
        pts = sorted(
            (
                r
                for r in rows
                if (r["model"], r["mode"], bool(r.get("checkpointing"))) == (model, mode, ckpt) and "error" not in r
            ),
            key=lambda r: r["seq_len"],
        )
        if not pts:
            continue
        x = [r["seq_len"] for r in pts]
        label = f"{model} ({mode}{', checkpointed' if ckpt else ''})"
        axes[0].plot(x, [r["tokens_per_s"] for r in pts], "-o", label=label)
        axes[1].plot(x, [r["memory_mib"] for r in pts], "-o", label=label)
    style_log_axes(axes, "sequence length (tokens)", ("tokens/s (forward+backward)", "peak memory (MiB)"))
    names = [PEER_NAMES[m] for m in MODELS if m in PEER_NAMES and any(r["model"] == m for r in rows)]
    fig.suptitle(f"Training step: RetNet vs {', '.join(names) or 'Llama'} (same parameter count)")
    return fig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="forward+backward tokens/s and memory vs length, RetNet vs Llama/peers")
    p.add_argument("--lengths", type=positive_ints, default=[512, 1024, 2048, 4096, 8192, 16384])
    add_models(p, MODELS, DEFAULT_MODELS, RECURRENT)
    p.add_argument(
        "--modes",
        type=comma_choices(MODES, "modes"),
        default=list(MODES),
        help=f"comma-separated cases: parallel, chunkwise (RetNet), sdpa (Llama), {PEER_MODE} (peers); default all",
    )
    p.add_argument(
        "--checkpointing",
        choices=tuple(CHECKPOINTING),
        default="off",
        help="activation checkpointing per decoder block: off, on, or both side by side (default off)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup-len", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    add_device(p)
    p.add_argument("--memory-budget-gib", type=float, default=10.0)
    p.add_argument("--case-timeout", type=float, default=1800.0)
    p.add_argument(
        "--malloc", choices=sorted(MALLOC_MODES), default="retain",
        help="every case's glibc setting, as `retnet train --malloc` (return: lowest peak memory)",
    )  # fmt: skip
    TimeBudget.add_argument(p)
    p.add_argument("--tiny", action="store_true", help="toy model (smoke test)")
    p.add_argument("--in-process", action="store_true", help="no worker processes (smoke test; memory is shared)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR))
    p.add_argument("--name", default="train", help="report file name (<name>.json/.md/.png)")
    p.set_defaults(func=run)
