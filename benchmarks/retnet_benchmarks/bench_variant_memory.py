"""``retnet bench variant-memory``: decoding-state bytes vs context for RetNet, gated, hybrid, YOCO and Llama.

What a decoder must keep per sequence to generate the next token: RetNet's fixed per-layer states, the KV
caches of a hybrid's attention layers, YOCO's single shared KV cache, Llama's KV cache in every layer. Bytes
are measured from real prefills (``RetNetState.nbytes()``, the tensors of Hugging Face's ``DynamicCache``) at
the measured contexts and checked against the closed-form count, which then gives the longer contexts.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from retnet_benchmarks.options import add_out_dir, add_threads, positive_ints
from retnet_benchmarks.report import subplots, write_report

VARIANTS = {"retnet": "", "gated": "-gated", "hybrid": "-hybrid", "yoco": "-yoco"}  # preset name suffixes


def llama_for(preset: str):
    """A Hugging Face Llama with the RetNet preset's width, depth and heads (float32, SDPA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from retnet.models import RetNetConfig

    c = RetNetConfig.preset(preset)
    cfg = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.ffn_dim,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_heads,
        max_position_embeddings=65536,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).eval()


def cache_nbytes(cache: Any) -> int:
    """Bytes of a Hugging Face cache's key and value tensors."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(t.numel() * t.element_size() for lay in layers for t in (lay.keys, lay.values))
    return sum(t.numel() * t.element_size() for t in (*cache.key_cache, *cache.value_cache))  # older transformers


def measure(name: str, context: int, shape: str = "small") -> int:
    """State bytes after a real prefill of ``context`` random tokens (batch 1, float32)."""
    from retnet.models import RetNetConfig, RetNetForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(0, 256, (1, context))
    with torch.no_grad():
        if name == "llama":
            from retnet.hf.cache import output_cache

            model = llama_for(shape)
            return cache_nbytes(output_cache(model(ids, use_cache=True)))
        model = RetNetForCausalLM(RetNetConfig.preset(shape + VARIANTS[name])).eval()
        return model(ids, use_cache=True, mode="chunkwise", logits_to_keep=1).state.nbytes()


def formula(name: str, context: int, shape: str = "small") -> int:
    from retnet.models import RetNetConfig

    if name == "llama":
        c = RetNetConfig.preset(shape)
        return 2 * c.num_layers * c.hidden_size * 4 * context
    return RetNetConfig.preset(shape + VARIANTS[name]).state_nbytes(context)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, checks = [], {}
    names = [*VARIANTS, "llama"]
    for name in names:
        for n in args.measure:
            got, want = measure(name, n, args.shape), formula(name, n, args.shape)
            checks[f"{name}@{n}"] = got == want
            if got != want:
                print(f"warning: {name} at {n}: measured {got} bytes, formula {want}")
    for name in names:
        slope = (formula(name, 2048, args.shape) - formula(name, 1024, args.shape)) / 1024
        for n in args.contexts:
            b = formula(name, n, args.shape)
            rows.append(
                {
                    "model": name,
                    "context": n,
                    "state_MiB": round(b / 2**20, 3),
                    "bytes_per_context_token": round(b / n, 1),
                    "marginal_bytes_per_token": slope,
                    "measured": n in args.measure,
                }
            )
    longest = max(args.contexts)
    at = {r["model"]: r["state_MiB"] for r in rows if r["context"] == longest}
    summary = {
        "shape": f"the {args.shape} presets ({args.shape}, -gated, -hybrid, -yoco); Llama with the same d, layers, "
        "heads and ffn",
        "hybrid": "gated retention with attention in every 4th layer",
        "yoco": "first half gated retention, second half cross-attention reading one shared KV cache",
        "formula equals measured bytes": all(checks.values()),
        **{f"{m} state at {longest} tokens (MiB)": v for m, v in at.items()},
    }
    notes = (
        "Batch 1, float32 (KV caches would halve in bf16; retention states stay float32). `measured` rows come "
        "from real prefills (RetNetState.nbytes(), the DynamicCache's tensors); the others from the same "
        "formula, checked equal at the measured contexts. `marginal_bytes_per_token` is what one more token of "
        "context adds: 0 for RetNet, one KV pair per attention layer for the hybrid, one for YOCO's whole "
        "cross-decoder, one per layer for Llama."
    )
    chart = None
    if not args.no_write:
        chart, ax = subplots(figsize=(6, 4))
        for name in names:
            pts = [r for r in rows if r["model"] == name]
            ax.plot([r["context"] for r in pts], [r["state_MiB"] for r in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decoding state (MiB, batch 1, fp32)")
        ax.legend()
        ax.grid(alpha=0.3)
        paths = write_report(
            "variant_memory",
            title="Decoding state vs context: RetNet, gated, hybrid, YOCO, Llama",
            rows=rows,
            out_dir=args.out_dir,
            summary=summary,
            notes=notes,
            chart=chart,
        )
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    for r in rows:
        print(r)
    print("formula equals measured:", checks)
    return 0 if all(checks.values()) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("variant-memory", help="decoding-state bytes vs context per variant (and Llama)")
    p.add_argument("--contexts", type=positive_ints, default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--measure", type=positive_ints, default=[1024, 2048], help="contexts measured by real prefills")
    p.add_argument("--shape", choices=["tiny", "small"], default="small", help="preset family (default small)")
    add_threads(p, 2)
    p.add_argument("--no-write", action="store_true")
    add_out_dir(p)
    p.set_defaults(func=run)
