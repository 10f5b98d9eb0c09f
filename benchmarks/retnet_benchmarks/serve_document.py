"""``retnet bench serve --case document``: one long document per length through a real server.

For each length (8K to 128K tokens by default, ascending) a new stored conversation gets the document as a
streaming completion (token ids, one reply token), then a short follow-up turn with ``conversation_id`` (the
document is served like any conversation). Per length: prefill tokens/s (prompt tokens over the time to the
first token, seen by the client), the server's peak RSS during the request above its RSS before it
(``VmHWM`` after resetting it through ``/proc/PID/clear_refs``), the progress comments the stream carried, and
the follow-up turn's time to first token and prompt tokens. The memory goal compares the peak growth with the
KV cache a matched Llama (:func:`retnet_benchmarks.baseline.matched_llama_config`, float32) needs for the same
length.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path

from retnet_benchmarks.measure import current_rss, peak_rss, reset_peak_rss
from retnet_benchmarks.report import subplots

DEFAULT_LENGTHS = (8192, 16384, 32768, 65536, 131072)
FOLLOW_UP_TOKENS = 32


def llama_kv_bytes(config, tokens: int) -> int:
    """A float32 KV cache of the matched Llama for ``tokens`` tokens (keys and values, every layer)."""
    from retnet_benchmarks.baseline import matched_llama_config

    llama = matched_llama_config(config, max_positions=max(tokens, 2048))
    head_dim = llama.hidden_size // llama.num_attention_heads
    return 2 * llama.num_hidden_layers * llama.num_key_value_heads * head_dim * tokens * 4


def _document(tokens: int, vocab: int, seed: int) -> list[int]:
    """Random byte-token ids (no end-of-text id)."""
    rng = random.Random(seed)
    return [rng.randrange(min(vocab, 256)) for _ in range(tokens)]


def stream_completion(url: str, body: dict) -> dict:
    """One streaming completion, read as raw SSE: time to the first data chunk, the progress comments, usage."""
    import httpx

    start, first, progress, usage, conv = time.perf_counter(), None, [], None, None
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=3600) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"the server answered {resp.status_code}: {resp.text[:300]}")
        for line in resp.iter_lines():
            if line.startswith(": prefill "):
                done, total = line[len(": prefill ") :].split("/")
                progress.append((round(time.perf_counter() - start, 3), int(done), int(total)))
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                first = first or time.perf_counter()
                conv = chunk.get("conversation_id", conv)
                usage = chunk.get("usage") or usage
    return {"ttft_s": (first or time.perf_counter()) - start, "progress": progress, "usage": usage, "conv": conv}


def _one_document(server, pid: int, common: dict, doc: list[int]) -> dict:
    """The document as a new stored conversation, then a follow-up turn: times, peak RSS growth, progress."""
    before = current_rss(pid)
    reset_peak_rss(pid)
    first = stream_completion(server.url, {**common, "prompt": doc, "store": True})
    growth = peak_rss(pid) - before
    follow = stream_completion(
        server.url, {**common, "prompt": doc[:FOLLOW_UP_TOKENS], "conversation_id": first["conv"], "max_tokens": 8}
    )
    return {
        "prefill_s": first["ttft_s"], "before": before, "growth": growth, "progress": len(first["progress"]),
        "follow_ttft": follow["ttft_s"], "follow_prompt": follow["usage"]["prompt_tokens"],
    }  # fmt: skip


def run_document_case(args, model_dir: Path, tmp: Path, server_cls) -> tuple[list[dict], dict, str]:
    """Rows, summary and notes of the document case (see the module docstring)."""
    import httpx

    from retnet.models import RetNetConfig
    from retnet.models.directory import read_config_json

    config = RetNetConfig.from_dict(read_config_json(model_dir))
    lengths, repeats = sorted(args.lengths), args.doc_repeats
    extra = ["--prefix-cache-bytes", "0", "--max-prompt-tokens", str(lengths[-1] + 1)]
    extra += ["--max-body-bytes", str(16 * lengths[-1] + (1 << 16)), "--prefill-chunk", str(args.prefill_chunk)]
    extra += ["--log-level", "info", "--request-timeout", "600"]
    load = [os.getloadavg()[0], 0.0]
    server = server_cls(model_dir, tmp / "data-document", args.threads, extra)
    rows = []
    try:
        server.wait_healthy()
        pid = server.proc.pid
        common = {"model": "bench-retnet", "max_tokens": 1, "temperature": 0}
        stream_completion(server.url, {**common, "prompt": _document(2048, config.vocab_size, 0)})  # warm-up
        weights_rss = current_rss(pid)
        for i, n in enumerate(lengths):
            runs = [_one_document(server, pid, common, _document(n, config.vocab_size, i + 1)) for _ in range(repeats)]
            fastest = min(r["prefill_s"] for r in runs)
            kv = llama_kv_bytes(config, n)
            growth = max(r["growth"] for r in runs)
            row = {
                "tokens": n,
                "prefill_s_best": round(fastest, 3),
                "prefill_s_median": round(statistics.median(r["prefill_s"] for r in runs), 3),
                "prefill_tokens_per_s": round(n / fastest, 1),
                "rss_before_mib": round(min(r["before"] for r in runs) / 2**20, 1),
                "peak_rss_growth_mib": round(growth / 2**20, 2),
                "llama_kv_cache_mib": round(kv / 2**20, 1),
                "growth_over_kv_pct": round(100 * growth / kv, 3),
                "progress_comments": min(r["progress"] for r in runs),
                "follow_up_ttft_ms": round(1000 * statistics.median(r["follow_ttft"] for r in runs), 1),
                "follow_up_prompt_tokens": max(r["follow_prompt"] for r in runs),
            }
            rows.append(row)
            print(row, flush=True)
        health = httpx.get(server.url + "/health").json()
        load[1] = os.getloadavg()[0]
    finally:
        server.stop()
    log_lines = [ln for ln in Path(server.log.name).read_text().splitlines() if "prefill:" in ln]
    base = rows[0]["prefill_tokens_per_s"]
    flat = [r["prefill_tokens_per_s"] / base for r in rows]
    summary = {
        "model": str(args.model) if args.model else f"random weights, preset {args.preset}",
        "server_threads": args.threads,
        "prefill_chunk": args.prefill_chunk,
        "server_rss_after_warm_up_mib": round(weights_rss / 2**20, 1),
        "lengths": lengths,
        "prefill_tokens_per_s": [r["prefill_tokens_per_s"] for r in rows],
        "prefill_rate_over_first_min": round(min(flat), 3),
        "prefill_rate_over_first_max": round(max(flat), 3),
        "peak_rss_growth_mib_max": max(r["peak_rss_growth_mib"] for r in rows),
        "growth_over_kv_pct_at_longest": rows[-1]["growth_over_kv_pct"],
        "progress_log_lines": len(log_lines),
        "load_average_start_end": [round(x, 2) for x in load],
        "niceness": os.nice(0),
        "store_conversations": health["store"]["conversations"],
        "goal_rss_growth_below_5pct_of_kv_at_longest": rows[-1]["growth_over_kv_pct"] < 5,
        "goal_prefill_flat_within_15pct": all(0.85 <= f <= 1.15 for f in flat),
    }
    notes = f"""
One server (random-weight model, `--threads {args.threads}`, `--prefill-chunk {args.prefill_chunk}`, prefix states
off: `--prefix-cache-bytes 0`, since every state the prefix cache keeps is a whole state, bounded separately by
its own `--prefix-cache-bytes`). After a 2,048-token warm-up, each length in turn, {repeats} times
(`--doc-repeats`): a new stored conversation whose prompt is the document (random byte tokens, sent as token
ids to `/v1/completions`, `stream: true`, one reply token), then a {FOLLOW_UP_TOKENS}-token follow-up turn on it
with `conversation_id`.

`prefill_tokens_per_s` is the document's tokens over the time from sending the request to its first data
chunk, as the client sees it (request parsing included), from the fastest of the runs: the benchmark ran at
niceness {os.nice(0)} on a machine shared with other engineers' jobs (load average {load[0]:.1f} at the start,
{load[1]:.1f} at the end), so a slower run also measures their work; the median time is listed too.
`peak_rss_growth_mib` is the largest, over the runs, of the server's peak RSS
during the request (`VmHWM`, reset just before through `/proc/PID/clear_refs`) minus its RSS just before;
`llama_kv_cache_mib` is the float32 KV cache of a Llama of matched size
(`retnet_benchmarks.baseline.matched_llama_config`) for the same length. `progress_comments` counts the
`: prefill DONE/TOTAL` SSE comments the stream carried (one per `--progress-interval`, default 1 s; fewest over
the runs); the server also logged {len(log_lines)} `prefill:` progress lines at INFO. `follow_up_prompt_tokens`:
the follow-up turn processed only its own tokens plus the pending one.
"""
    return rows, summary, notes


def document_chart(rows: list[dict]):
    n = [r["tokens"] for r in rows]
    fig, (a, b) = subplots(1, 2, figsize=(11, 4))
    a.plot(n, [r["prefill_tokens_per_s"] for r in rows], "o-")
    base = rows[0]["prefill_tokens_per_s"]
    a.axhspan(0.85 * base, 1.15 * base, alpha=0.15, color="C2", label="within 15% of 8K")
    a.set_xscale("log", base=2)
    a.set_ylim(0, 1.3 * max(r["prefill_tokens_per_s"] for r in rows))
    a.set_xlabel("document tokens")
    a.set_ylabel("prefill tokens/s")
    a.set_title("prefill speed by document length")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(n, [r["llama_kv_cache_mib"] for r in rows], "s--", color="C3", label="Llama KV cache (float32)")
    b.plot(n, [r["peak_rss_growth_mib"] for r in rows], "o-", color="C0", label="server peak RSS growth")
    b.plot(n, [0.05 * r["llama_kv_cache_mib"] for r in rows], ":", color="C3", label="5% of the KV cache")
    b.set_xscale("log", base=2)
    b.set_yscale("symlog", linthresh=1)
    b.set_xlabel("document tokens")
    b.set_ylabel("MiB")
    b.set_title("memory beyond the weights")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    return fig
