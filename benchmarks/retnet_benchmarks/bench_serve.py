"""``retnet bench serve``: conversation turns at constant cost, 32 concurrent streaming clients, prefix states.

Part 1 starts a real server and holds several conversations side by side in two ways: stateful (each turn
sends only the new user message with ``conversation_id``; the server continues from the stored state) and
re-sending (each turn sends the whole history, as a client of a stateless server must). It records the time
to first token of every turn k = 1..K. Part 2 runs N streaming clients, each holding its own conversation,
for a fixed time and reports throughput, latency percentiles, errors and the server's RSS growth.

``--case prefix`` instead starts two servers, one without prefix states and one with them, and sends each the
same new conversations that share one long system prompt: time to first token and prefilled tokens, side by
side. ``--case document`` sends documents of 8K to 128K tokens (:mod:`retnet_benchmarks.serve_document`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retnet_benchmarks.measure import child_env, current_rss
from retnet_benchmarks.options import add_out_dir, add_threads
from retnet_benchmarks.report import subplots, write_report

MODEL = "bench-retnet"
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum old tunes".split()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serving: TTFT per conversation turn and concurrent streaming load, or prefix states"
    )
    p.add_argument(
        "--case", choices=["turns", "prefix", "document"], default="turns",
        help="turns: conversation turns and streaming load; prefix: a shared system prompt with and without "
        "prefix states; document: long documents (prefill speed and memory by length)",
    )  # fmt: skip
    p.add_argument("--model", type=Path, default=None, help="model directory (default: random weights, --preset)")
    p.add_argument("--preset", default="tiny", help="preset for the random model (default tiny)")
    p.add_argument("--turns", type=int, default=50)
    p.add_argument("--repeats", type=int, default=9, help="stored-state conversations; TTFT is their median")
    p.add_argument("--resend-repeats", type=int, default=3, help="re-sending conversations (slow: whole history)")
    p.add_argument("--user-chars", type=int, default=120, help="length of each user message")
    p.add_argument("--reply-tokens", type=int, default=16)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    p.add_argument("--load-max-tokens", type=int, default=32)
    add_threads(p, 1, "server torch threads (1: the clients share the cores)")
    p.add_argument("--conversations", type=int, default=100, help="prefix case: new conversations")
    p.add_argument("--system-tokens", type=int, default=2000, help="prefix case: tokens of the shared system prompt")
    p.add_argument(
        "--lengths", type=lambda v: [int(x) for x in v.split(",")], default=None,
        help="document case: comma-separated document lengths in tokens (default 8192,...,131072)",
    )  # fmt: skip
    p.add_argument("--prefill-chunk", type=int, default=256, help="document case: the server's --prefill-chunk")
    p.add_argument("--doc-repeats", type=int, default=3, help="document case: runs per length (the fastest counts)")
    add_out_dir(p, "--out")
    p.add_argument("--name", default=None, help="report name (default: serve, or serve_prefix)")
    p.add_argument("--quick", action="store_true", help="toy sizes (a smoke test of the benchmark)")
    p.set_defaults(func=run)


# -------------------------------------------------------------------------------------------- server process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, model_dir: Path, data_dir: Path, threads: int | None, extra: list[str] = ()) -> None:
        self.port = _free_port()
        env = child_env()
        env.pop("RETNET_API_KEY", None)
        cmd = [sys.executable, "-m", "retnet", "serve", str(model_dir), "--port", str(self.port)]
        cmd += ["--model-name", MODEL, "--data-dir", str(data_dir), "--max-prompt-tokens", "100000"]
        cmd += ["--max-batch", "64", "--log-level", "error", *extra]
        if threads:
            cmd += ["--threads", str(threads)]
        self.log = open(data_dir.parent / f"server-{data_dir.name}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    def rss_bytes(self) -> int:
        return current_rss(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -------------------------------------------------------------------------------------------- part 1: turns
def _user_message(conv: int, turn: int, chars: int) -> str:
    words, i = [], conv * 7 + turn * 3
    while len(" ".join(words)) < chars:
        words.append(WORDS[i % len(WORDS)])
        i += 5
    return " ".join(words)[:chars]


async def _stream_turn(
    client, messages: list[dict], max_tokens: int, extra: dict
) -> tuple[float, str, dict, str | None]:
    """One streamed chat turn: (ttft_s, reply text, usage, conversation_id)."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    ttft, parts, usage, conv = None, [], {}, None
    async for chunk in stream:
        if ttft is None:
            ttft = time.perf_counter() - t0
        conv = getattr(chunk, "conversation_id", conv)
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    return ttft, "".join(parts), usage, conv


async def _turns(url: str, args) -> list[dict]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    convs: list[str | None] = [None] * args.repeats
    histories: list[list[dict]] = [[] for _ in range(args.resend_repeats)]
    rows = []
    for k in range(1, args.turns + 1):
        stateful, resend, stateful_tokens, resend_tokens = [], [], [], []
        for r in range(max(args.repeats, args.resend_repeats)):
            user = {"role": "user", "content": _user_message(r, k, args.user_chars)}
            if r < args.repeats:
                extra = {"conversation_id": convs[r]} if convs[r] else {"store": True}
                ttft, _, usage, conv = await _stream_turn(client, [user], args.reply_tokens, extra)
                convs[r] = conv
                stateful.append(ttft)
                stateful_tokens.append(usage.get("prompt_tokens", 0))
            if r < args.resend_repeats:
                histories[r].append(user)
                ttft, reply, usage, _ = await _stream_turn(client, histories[r], args.reply_tokens, {})
                histories[r].append({"role": "assistant", "content": reply})
                resend.append(ttft)
                resend_tokens.append(usage.get("prompt_tokens", 0))
        rows.append(
            {
                "turn": k,
                "ttft_stateful_ms": 1000 * statistics.median(stateful),
                "ttft_resend_ms": 1000 * statistics.median(resend),
                "prompt_tokens_stateful": int(statistics.median(stateful_tokens)),
                "prompt_tokens_resend": int(statistics.median(resend_tokens)),
            }
        )
        print(
            f"turn {k:3d}: TTFT stateful {rows[-1]['ttft_stateful_ms']:8.1f} ms "
            f"({rows[-1]['prompt_tokens_stateful']} tokens), re-send {rows[-1]['ttft_resend_ms']:8.1f} ms "
            f"({rows[-1]['prompt_tokens_resend']} tokens)",
            flush=True,
        )
    return rows


# -------------------------------------------------------------------------------------------- part 2: load
def rss_growth(samples: list[tuple[float, int]], edge_s: float) -> tuple[float, float, float]:
    """(start, end, slope per second) of an RSS series: medians of its first and last ``edge_s`` seconds, so
    that one sample taken mid-step (RSS moves by tens of MiB as batches come and go) decides nothing, and the
    least-squares slope over the whole series, which shows a steady leak however noisy the samples."""
    t0, t1 = samples[0][0], samples[-1][0]
    first = [b for t, b in samples if t <= t0 + edge_s]
    last = [b for t, b in samples if t >= t1 - edge_s]
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mb = sum(b for _, b in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    slope = sum((t - mt) * (b - mb) for t, b in samples) / var if var > 0 else 0.0
    return statistics.median(first), statistics.median(last), slope


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def _load(server: _Server, args) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    start = time.perf_counter()
    measure_from, end = start + args.warmup, start + args.warmup + args.duration
    results: list[dict] = []
    errors: list[str] = []
    rss: list[tuple[float, int]] = []

    async def one_client(i: int) -> None:
        conv, turn = None, 0
        while time.perf_counter() < end:
            turn += 1
            user = {"role": "user", "content": _user_message(i, turn, 60)}
            t0 = time.perf_counter()
            try:
                extra = {"conversation_id": conv} if conv else {"store": True}
                ttft, _, usage, conv = await _stream_turn(client, [user], args.load_max_tokens, extra)
            except Exception as exc:  # counted, reported
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= end:
                results.append({"latency": t1 - t0, "ttft": ttft, "tokens": usage.get("completion_tokens", 0)})

    async def sample_rss() -> None:
        while time.perf_counter() < end:
            rss.append((time.perf_counter() - start, server.rss_bytes()))
            await asyncio.sleep(0.5)

    await asyncio.gather(sample_rss(), *(one_client(i) for i in range(args.clients)))
    window = [(t, b) for t, b in rss if t >= args.warmup] or rss
    base, final, slope = rss_growth(window, edge_s=min(10.0, args.duration / 4))
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "requests_completed": len(results),
        "errors": len(errors),
        "first_errors": errors[:3],
        "tokens_per_s": tokens / args.duration,
        "latency_p50_ms": 1000 * _pct(lat, 0.5),
        "latency_p99_ms": 1000 * _pct(lat, 0.99),
        "ttft_p50_ms": 1000 * _pct(ttft, 0.5),
        "ttft_p99_ms": 1000 * _pct(ttft, 0.99),
        "rss_start_mb": base / 2**20,
        "rss_end_mb": final / 2**20,
        "rss_growth_pct": 100 * (final - base) / base,
        "rss_trend_mb_per_min": slope * 60 / 2**20,
        "rss_first_sample_mb": window[0][1] / 2**20,
        "rss_last_sample_mb": window[-1][1] / 2**20,
        "rss_min_mb": min(b for _, b in window) / 2**20,
        "rss_max_mb": max(b for _, b in window) / 2**20,
        "rss_series": [(round(t, 1), round(b / 2**20, 2)) for t, b in rss],
    }


# -------------------------------------------------------------------------------------------- report
def _chart(rows: list[dict], load: dict, args):
    fig, (a, b) = subplots(1, 2, figsize=(11, 4))
    turns = [r["turn"] for r in rows]
    a.plot(turns, [r["ttft_resend_ms"] for r in rows], "o-", ms=3, label="re-send whole history")
    a.plot(turns, [r["ttft_stateful_ms"] for r in rows], "o-", ms=3, label="stored state (conversation_id)")
    a.set_xlabel("turn k")
    a.set_ylabel("time to first token (ms, median)")
    a.set_title("TTFT of turn k of a conversation")
    a.legend()
    a.grid(alpha=0.3)
    series = load["rss_series"]
    b.plot([t for t, _ in series], [m for _, m in series])
    b.axvline(args.warmup, color="gray", ls="--", lw=1, label="measuring starts")
    b.set_xlabel("seconds")
    b.set_ylabel("server RSS (MiB)")
    b.set_title(f"{args.clients} streaming clients")
    b.set_ylim(0, max(m for _, m in series) * 1.15)
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def summarize(rows: list[dict], load: dict, state_bytes: int, args) -> dict:
    """The headline figures: TTFT ratios turn K / turn 2 for both modes, load figures, goals met."""
    two, last = rows[min(1, len(rows) - 1)], rows[-1]
    stateful_ratio = last["ttft_stateful_ms"] / two["ttft_stateful_ms"]
    resend_ratio = last["ttft_resend_ms"] / two["ttft_resend_ms"]

    def window(lo: int, hi: int, key: str) -> float:  # median over turns lo..hi (less noise than one turn)
        return statistics.median(r[key] for r in rows if lo <= r["turn"] <= hi)

    k = last["turn"]
    summary = {
        "model": str(args.model) if args.model else f"random weights, preset {args.preset}",
        "state_bytes_per_conversation": state_bytes,
        f"ttft_stateful_turn{last['turn']}_over_turn2": round(stateful_ratio, 3),
        f"ttft_resend_turn{last['turn']}_over_turn2": round(resend_ratio, 3),
        "goal_stateful_within_20pct": bool(abs(stateful_ratio - 1) <= 0.2),
        f"ttft_stateful_turns{max(k - 4, 1)}-{k}_over_turns2-6 (medians)": round(
            window(k - 4, k, "ttft_stateful_ms") / window(2, 6, "ttft_stateful_ms"), 3
        ),
        f"ttft_resend_turns{max(k - 4, 1)}-{k}_over_turns2-6 (medians)": round(
            window(k - 4, k, "ttft_resend_ms") / window(2, 6, "ttft_resend_ms"), 3
        ),
        **{f"load_{k}": (round(v, 3) if isinstance(v, float) else v) for k, v in load.items() if k != "rss_series"},
        "goal_no_errors": load["errors"] == 0,
        "goal_rss_growth_below_5pct": bool(load["rss_growth_pct"] < 5),
    }
    return summary


# -------------------------------------------------------------------------------------------- prefix states
def system_prompt(model_dir: Path, tokens: int) -> str:
    """A system message whose rendered turn (role marker, text, end marker) is ``tokens`` tokens long, or just
    under when the tokenizer cannot hit the number exactly."""
    from retnet.data.tokenizers import Tokenizer
    from retnet.models.directory import read_config_json
    from retnet.serving.chat_template import ChatTemplate

    tok = Tokenizer.load(model_dir, read_config_json(model_dir).get("eos_token_id"))
    tpl = ChatTemplate.from_dir(model_dir)

    def size(text: str) -> int:
        return len(tok.encode(tpl.render([("system", text)], add_generation_prompt=False)))

    words, i = [], 0
    while size(" ".join(words)) < tokens:
        words.append(WORDS[(i * 7) % len(WORDS)])
        i += 1
    text = " ".join(words)
    while size(text) > tokens:
        text = text[:-1]
    return text


async def _warm_up(url: str, args) -> None:
    """One request with another system prompt, so the first measured one does not pay for warming up."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    warm = [{"role": "system", "content": "warm-up"}, {"role": "user", "content": "hello"}]
    await _stream_turn(client, warm, args.reply_tokens, {})


async def _prefix_run(url: str, system: str, args) -> list[dict]:
    """``args.conversations`` new conversations (one at a time) after ``system``: TTFT and usage of each."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    out = []
    for i in range(args.conversations):
        user = (f"{i}: " + _user_message(i, 1, args.user_chars))[: args.user_chars]
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        ttft, _, usage, _ = await _stream_turn(client, messages, args.reply_tokens, {"store": True})
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        out.append({"ttft_ms": 1000 * ttft, "prompt_tokens": usage["prompt_tokens"], "cached_tokens": cached})
    return out


def prefix_summary(runs: dict, prefilled: dict, prefix_stats: dict, args) -> tuple[list[dict], dict]:
    """Rows (one per conversation, both modes side by side) and the headline figures: prefill tokens and median
    TTFT without / with prefix states, their ratios, goals met (>= 20x fewer prefill tokens, >= 10x lower TTFT)."""
    rows = [
        {"conversation": i + 1, **{f"{k}_{m}": v for m in ("without", "with") for k, v in runs[m][i].items()}}
        for i in range(len(runs["with"]))
    ]
    med = {m: statistics.median(r["ttft_ms"] for r in runs[m]) for m in runs}
    summary = {
        "model": str(args.model) if args.model else f"random weights, preset {args.preset}",
        "conversations": len(runs["with"]),
        "system_prompt_tokens": args.system_tokens,
        "prompt_tokens_total": sum(r["prompt_tokens"] for r in runs["with"]),
        "prefill_tokens_without": prefilled["without"],
        "prefill_tokens_with": prefilled["with"],
        "prefill_tokens_ratio": round(prefilled["without"] / max(prefilled["with"], 1), 2),
        "ttft_median_ms_without": round(med["without"], 2),
        "ttft_median_ms_with": round(med["with"], 2),
        "ttft_median_ratio": round(med["without"] / med["with"], 2),
        "ttft_p90_ms_without": round(_pct([r["ttft_ms"] for r in runs["without"]], 0.9), 2),
        "ttft_p90_ms_with": round(_pct([r["ttft_ms"] for r in runs["with"]], 0.9), 2),
        "ttft_first_conversation_ms_with": round(runs["with"][0]["ttft_ms"], 2),
        "prefix_cache": prefix_stats,
        "goal_prefill_tokens_20x": prefilled["without"] >= 20 * prefilled["with"],
        "goal_ttft_median_10x": med["without"] >= 10 * med["with"],
    }
    return rows, summary


def _prefix_case(args, model_dir: Path, tmp: Path) -> None:
    import httpx

    system = system_prompt(model_dir, args.system_tokens)
    runs, prefilled = {}, {}
    for mode, extra in (("without", ["--prefix-cache-bytes", "0"]), ("with", [])):
        server = _Server(model_dir, tmp / f"data-{mode}", args.threads, extra)
        try:
            server.wait_healthy()
            asyncio.run(_warm_up(server.url, args))
            before = httpx.get(server.url + "/health").json()["engine"]["tokens_prefilled"]
            runs[mode] = asyncio.run(_prefix_run(server.url, system, args))
            after = httpx.get(server.url + "/health").json()
            prefilled[mode] = after["engine"]["tokens_prefilled"] - before
            if mode == "with":
                prefix_stats = after["prefix_cache"]
        finally:
            server.stop()
        ttfts = [r["ttft_ms"] for r in runs[mode]]
        print(
            f"{mode} prefix states: median TTFT {statistics.median(ttfts):.1f} ms, {prefilled[mode]} tokens prefilled"
        )
    rows, summary = prefix_summary(runs, prefilled, prefix_stats, args)
    notes = f"""
Two servers on the same model, one after the other (`--prefix-cache-bytes 0`, then the defaults: prefix states
at message boundaries and every 256 tokens, 256 MiB). Each gets one warm-up request, then {args.conversations}
new stored conversations, one at a time: the same system prompt of {args.system_tokens} tokens (its rendered
turn) and a different user message of {args.user_chars} characters (`--user-chars`); replies of {args.reply_tokens}
tokens, greedy, streamed. TTFT is measured by the `openai` client from sending the request to the first chunk
(sent with the first sampled token). Prefill tokens are the server's own count (`/health` engine
`tokens_prefilled`, before and after). With prefix states the first conversation prefills everything and keeps
the state at the end of the system message; every later one starts from it and prefills only its user message
and the assistant prompt.
"""
    write_report(
        args.name or "serve_prefix",
        title="Serving: prefix states for a shared system prompt",
        rows=rows,
        out_dir=args.out,
        summary=summary,
        notes=notes,
        chart=_prefix_chart(runs, prefilled, args),
    )
    print(summary)


def _prefix_chart(runs: dict, prefilled: dict, args):
    fig, (a, b) = subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for mode, label in (("without", "without prefix states"), ("with", "with prefix states")):
        a.plot([r["ttft_ms"] for r in runs[mode]], "o", ms=3, label=label)
    a.set_yscale("log")
    a.set_xlabel("conversation (in order)")
    a.set_ylabel("time to first token (ms)")
    a.set_title(f"{args.conversations} new conversations, shared {args.system_tokens}-token system prompt")
    a.legend()
    a.grid(alpha=0.3)
    b.bar(["without", "with"], [prefilled["without"], prefilled["with"]], color=["C0", "C1"])
    b.set_yscale("log")
    b.set_ylabel("prompt tokens prefilled (all conversations)")
    b.set_title("prefill work")
    for i, m in enumerate(("without", "with")):
        b.text(i, prefilled[m], f"{prefilled[m]:,}", ha="center", va="bottom")
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _document_case(args) -> int:
    from retnet.models import RetNetConfig
    from retnet.serving.random_model import write_random_model
    from retnet_benchmarks.serve_document import DEFAULT_LENGTHS, document_chart, run_document_case

    args.lengths = args.lengths or list(DEFAULT_LENGTHS)
    if args.quick:
        args.lengths, args.doc_repeats = [1024, 2048], 1
    with tempfile.TemporaryDirectory(prefix="retnet-bench-serve-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model or write_random_model(tmp / "model", RetNetConfig.preset(args.preset, vocab_size=257))
        rows, summary, notes = run_document_case(args, model_dir, tmp, _Server)
    write_report(
        args.name or "serve_document",
        title="Serving: long documents, prefill speed and memory by length",
        rows=rows,
        out_dir=args.out,
        summary=summary,
        notes=notes,
        chart=document_chart(rows),
    )
    print(summary)
    return 0


def run(args: argparse.Namespace) -> int:
    from retnet.models import RetNetConfig
    from retnet.serving.random_model import write_random_model

    if args.case == "document":
        return _document_case(args)
    if args.case == "prefix":
        if args.quick:
            args.conversations, args.system_tokens, args.reply_tokens = 3, min(args.system_tokens, 300), 2
        with tempfile.TemporaryDirectory(prefix="retnet-bench-serve-") as tmp:
            tmp = Path(tmp)
            model_dir = args.model
            if model_dir is None:
                model_dir = write_random_model(tmp / "model", RetNetConfig.preset(args.preset, vocab_size=257))
            _prefix_case(args, model_dir, tmp)
        return 0
    if args.quick:
        args.turns, args.repeats, args.resend_repeats, args.clients = min(args.turns, 3), 1, 1, min(args.clients, 2)
        args.duration, args.warmup, args.reply_tokens, args.load_max_tokens = 2.0, 0.5, 4, 4
        args.user_chars = min(args.user_chars, 40)
    with tempfile.TemporaryDirectory(prefix="retnet-bench-serve-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            model_dir = write_random_model(tmp / "model", RetNetConfig.preset(args.preset, vocab_size=257))
        server = _Server(model_dir, tmp / "data", args.threads)
        try:
            server.wait_healthy()
            rows = asyncio.run(_turns(server.url, args))
            import httpx

            health_after_turns = httpx.get(server.url + "/health").json()
            load = asyncio.run(_load(server, args))
        finally:
            server.stop()
    summary = summarize(rows, load, health_after_turns["state_bytes_per_conversation"], args)
    notes = f"""
Part 1 holds {args.repeats} stored-state and {args.resend_repeats} re-sending conversations, {args.turns} turns
each; user messages of {args.user_chars} characters, replies of {args.reply_tokens} tokens (greedy), streamed.
TTFT is measured by the `openai` client from sending the request to the first chunk (sent with the first
sampled token) and is the median over the conversations of its mode. "Stored state" sends only the new
message with `conversation_id`; "re-send" sends the whole history to the same server without a conversation
(what any client of a stateless server must do).

Part 2: {args.clients} concurrent streaming clients (`openai.AsyncOpenAI`), each holding its own conversation
(60-character messages, `max_tokens={args.load_max_tokens}`), for {args.warmup:g} s of warm-up and then
{args.duration:g} s measured. Tokens/s counts completion tokens of requests that started and finished in the
measured window. RSS is sampled every 0.5 s; growth compares the median of the window's first 10 s with the
median of its last 10 s (single samples swing by tens of MiB as batches are built and freed: first/last sample,
min and max are listed too), and the trend is the least-squares slope over the window. The JSON holds the series.
Client and server share the machine's cores.
"""
    write_report(
        args.name or "serve",
        title="Serving: constant-cost conversation turns and concurrent streaming",
        rows=rows,
        out_dir=args.out,
        summary=summary,
        notes=notes,
        chart=_chart(rows, load, args),
        data={"rss_series_s_mib": load["rss_series"]},
    )
    print({k: v for k, v in summary.items()})
    return 0
