"""``retnet generate MODEL_DIR --prompt TEXT``: stream a continuation (chunkwise prefill, then O(1) per token)."""

from __future__ import annotations

import argparse
import sys

import torch

from retnet.cli.errors import CLIError
from retnet.cli.flags import POSITIVE, SEED, add_decode_speed_flags, device_from_flag, number, quantize_from_flag
from retnet.cli.model_dir import load_model_dir
from retnet.training.config import DEVICES, Bounds

TEMPERATURE = Bounds(0, integer=False)
TOP_P = Bounds(0, 1, lo_open=True, integer=False)


def add_sampling_args(p: argparse.ArgumentParser, *, max_tokens: int) -> None:
    """Sampling, device and decode-speed flags shared by generate and chat (each checked as it is parsed)."""
    p.add_argument(
        "--max-tokens", type=number(POSITIVE), default=max_tokens, help=f"tokens to generate (default {max_tokens})"
    )
    p.add_argument("--temperature", type=number(TEMPERATURE), default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=number(POSITIVE), default=None, help="sample among the k most likely tokens")
    p.add_argument(
        "--top-p", type=number(TOP_P), default=None, help="nucleus sampling: smallest set with mass >= p, in (0, 1]"
    )
    p.add_argument("--seed", type=number(SEED), default=0, help="sampling seed, 0 to 2**64-1 (same seed, same text)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto, cpu or cuda")
    add_decode_speed_flags(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate text from a trained model, streamed")
    p.add_argument("model_dir", help="model directory (e.g. runs/shakespeare)")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new line)")
    add_sampling_args(p, max_tokens=300)
    p.set_defaults(func=run)


def generate_text(
    model_dir: str,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    device: str = "auto",
    compile: bool = False,
    quantize: str = "none",
    out=None,
) -> str:
    """Stream the continuation of ``prompt`` to ``out`` (stdout by default) and return it."""
    from retnet.generation import Engine, SamplingParams, Sequence
    from retnet.generation.generate import PREFILL_CHUNK
    from retnet.models.decode_step import make_decode_step

    dev = device_from_flag(device)
    model, tokenizer = load_model_dir(model_dir, dev)
    model = quantize_from_flag(model, quantize, dev)
    ids = tokenizer.encode(prompt or "\n")
    if not ids:
        raise CLIError("--prompt encodes to no tokens")
    if len(ids) > 1_000_000:
        raise CLIError(f"--prompt is too long ({len(ids)} tokens)")
    out = out or sys.stdout
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    seq = Sequence(ids, params, generator=torch.Generator(device=dev).manual_seed(seed))
    decode_step = make_decode_step(model, compile=compile)
    engine = Engine(model, tokenizer, max_batch=1, prefill_chunk=PREFILL_CHUNK, decode_step=decode_step)
    pieces: list[str] = []
    if prompt:
        out.write(prompt)
    for _, (kind, value) in engine.run([seq]):
        if kind == "text":
            pieces.append(value)
            out.write(value)
            out.flush()
        elif kind == "error":
            raise CLIError(f"generation failed: {value.message}")
    out.write("\n")
    out.flush()
    return "".join(pieces)


def run(args: argparse.Namespace) -> int:
    generate_text(
        args.model_dir,
        args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
        compile=args.compile,
        quantize=args.quantize,
    )
    return 0
