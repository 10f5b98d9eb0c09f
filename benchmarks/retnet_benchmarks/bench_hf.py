"""``retnet bench hf``: per-token decoding cost of ``model.generate`` (transformers) against ``retnet generate``.

Both decode the same random-weight model greedily for ``--tokens`` tokens after a short prompt. A streamer
stamps every token, so the cost of token ``i`` is measured where it is produced: it must not grow with ``i``
(the cache is a fixed-size recurrent state). Reports the median CPU time per token early (tokens 2-101) and
late (the last 100 tokens), their ratio, the ``RetNetCache`` size after 10 and after ``--tokens`` tokens, and the
overhead of ``transformers``' generation loop over ours (a ratio measured side by side in one run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from retnet_benchmarks.options import add_out_dir, add_threads
from retnet_benchmarks.report import subplots, write_report


class _Stamps:
    """A ``transformers`` streamer that records the CPU time of each ``put`` (the prompt, then each token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.process_time())

    def end(self) -> None:
        pass


def per_token_hf(hf, prompt: torch.Tensor, tokens: int) -> tuple[list[float], int, int]:
    """Seconds per generated token (from the second on), cache bytes after 10 and after ``tokens`` tokens."""
    from retnet.hf.cache import output_cache

    sizes = []
    for n in (10, tokens):
        out = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, return_dict_in_generate=True)
        sizes.append(output_cache(out).nbytes())
    stamps = _Stamps()
    hf.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=stamps)
    t = stamps.times[1:]  # [0] is the prompt; t[0] is the first token (after the prefill)
    return [b - a for a, b in zip(t, t[1:])], sizes[0], sizes[1]


def per_token_ours(core, prompt: torch.Tensor, tokens: int) -> list[float]:
    from retnet.generation import stream_generate

    stamps = [time.process_time() for _ in stream_generate(core, prompt, max_new_tokens=tokens, temperature=0)]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def run(preset: str, tokens: int, prompt_len: int, threads: int, out_dir: str) -> dict:
    from retnet.hf import RetNetHFForCausalLM
    from retnet.models import RetNetConfig, RetNetForCausalLM

    if tokens < 20:
        raise ValueError(f"--tokens must be >= 20, got {tokens}")
    window = min(100, tokens // 2)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    core = RetNetForCausalLM(RetNetConfig.preset(preset)).eval()
    hf = RetNetHFForCausalLM.from_retnet(core)
    prompt = torch.randint(0, core.config.vocab_size, (1, prompt_len))
    hf.generate(prompt, max_new_tokens=20, do_sample=False)  # warm-up
    hf_dt, size_10, size_n = per_token_hf(hf, prompt, tokens)
    ours_dt = per_token_ours(core, prompt, tokens)

    def ms(xs: list[float]) -> float:
        return 1e3 * statistics.median(xs)

    rows = []
    for name, dt in (("transformers generate", hf_dt), ("retnet generate", ours_dt)):
        early, late = ms(dt[:window]), ms(dt[-window:])
        rows.append(
            {
                "loop": name,
                "tokens": tokens,
                f"ms/token (2-{window + 1})": early,
                f"ms/token ({tokens - window + 1}-{tokens})": late,
                "late/early": late / early,
            }
        )
    summary = {
        "cache bytes after 10 tokens": size_10,
        f"cache bytes after {tokens} tokens": size_n,
        "cache size constant": size_10 == size_n,
        "late/early per-token cost (transformers)": rows[0]["late/early"],
        "transformers/retnet per-token cost": statistics.median(hf_dt) / statistics.median(ours_dt),
    }
    chart = _chart(hf_dt, ours_dt)
    write_report(
        "hf_decode",
        title=f"transformers generate vs retnet generate: per-token cost ({preset} preset, random weights)",
        rows=rows,
        summary=summary,
        out_dir=out_dir,
        chart=chart,
        notes=(
            "CPU time per token (median over the window), greedy decoding, batch 1, float32, "
            f"prompt of {prompt_len} tokens. The cache is a `RetNetCache` (fixed-size recurrent state)."
        ),
    )
    return summary


def _chart(hf_dt: list[float], ours_dt: list[float]):
    def smooth(xs: list[float], w: int = 25) -> list[float]:
        return [1e3 * statistics.median(xs[max(0, i - w) : i + 1]) for i in range(len(xs))]

    fig, ax = subplots(figsize=(7, 3.5))
    ax.plot(range(2, len(hf_dt) + 2), smooth(hf_dt), label="transformers generate (RetNetCache)")
    ax.plot(range(2, len(ours_dt) + 2), smooth(ours_dt), label="retnet generate")
    ax.set_xlabel("generated token")
    ax.set_ylabel("CPU ms per token (running median)")
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hf", help="per-token decode cost of transformers generate vs retnet generate")
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    parser.add_argument("--tokens", type=int, default=1000, help="tokens to generate (default: 1000)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt length (default: 16)")
    add_threads(parser, 1, "torch threads")
    add_out_dir(parser)

    def main(args: argparse.Namespace) -> int:
        summary = run(args.preset, args.tokens, args.prompt_len, args.threads, args.out_dir)
        for key, value in summary.items():
            print(f"{key}: {value}")
        return 0

    parser.set_defaults(func=main)
