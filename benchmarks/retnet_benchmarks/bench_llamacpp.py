"""``retnet bench llamacpp``: RetNet decoding and prefill side by side with llama.cpp, batch 1, same threads.

The llama.cpp side is the equal-size Llama of ``bench decode`` (:mod:`retnet_benchmarks.baseline`), random
weights, converted to GGUF f32 and Q8_0 by llama.cpp's own converter (:mod:`retnet_benchmarks.llamacpp_gguf`)
and run through ``llama-cpp-python``. The RetNet side decodes through the step ``retnet generate``, ``chat`` and
``serve`` run (:func:`retnet.models.make_decode_step`, state updated in place): float32 eager, float32 compiled
(``compile=True``; its compile time is reported apart from the timed steps) and eager on int8 weights
(:func:`retnet.models.quantize_int8`).

Each (engine, context) runs in a fresh process: one warm-up block and step, then a prefill of ``context``
random token ids from empty in blocks of ``--prefill-block`` (timed: prefill tokens/s), then single-token
decode steps at that context (timed: ms/token): its memory and its figures alone. At each of ``--contexts`` one
more process holds every engine at once and times them interleaved (:func:`paired_case`: two steps of each in
turn, the second timed, round after round; prefill blocks the same way), so that the ratios between engines,
which the goals are, see the same moments of a shared machine whose speed drifts by tens of percent within
minutes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from retnet_benchmarks.baseline import (
    DECODE_100M,
    build_llama,
    build_pair,
    build_retnet,
    count_parameters,
    count_parameters_of_config,
)
from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.measure import TimeBudget, median_time, time_steps
from retnet_benchmarks.options import positive_int, positive_ints, positive_ints_or_none
from retnet_benchmarks.report import DEFAULT_OUT_DIR, write_report

LLAMACPP_ENGINES = {"llamacpp-f32": "f32", "llamacpp-q8_0": "q8_0"}
RETNET_ENGINES = ("retnet-f32", "retnet-compiled", "retnet-int8")
ENGINES = (*LLAMACPP_ENGINES, *RETNET_ENGINES)
TINY = dict(vocab_size=320, hidden_size=64, num_layers=2, num_heads=2, value_dim=96, ffn_dim=96, chunk_size=16)
MIB = 1024**2


def engine_contexts(engine: str, contexts: list[int], long_contexts: list[int]) -> list[int]:
    """The contexts an engine is measured at: every engine at ``contexts``; RetNet float32 eager also at the
    ``long_contexts`` (its prefill's flatness)."""
    extra = long_contexts if engine == "retnet-f32" else []
    return sorted(set(contexts) | set(extra))


def _retnet_engine(engine: str, config: dict[str, Any], seed: int) -> tuple[Callable, Callable, dict[str, Any]]:
    """Prefill and decode callables over a state holder for a RetNet engine, and facts about it (``compile_s``
    is read after the warm-up, whose first step compiles)."""
    from retnet.models import RetNetConfig, make_decode_step, quantize_int8
    from retnet.models.quantize import quantized_weight_bytes

    net = build_retnet(RetNetConfig(**config), seed)
    info: dict[str, Any] = {"params": count_parameters(net)}
    if engine == "retnet-int8":
        quantize_int8(net)
        info["int8_weight_mib"] = quantized_weight_bytes(net) / MIB
    step = make_decode_step(net, compile=engine == "retnet-compiled", in_place=True)
    holder: dict[str, Any] = {"state": None}

    def prefill(ids: torch.Tensor) -> None:
        with torch.no_grad():
            # As the generation engine prefills: the last position's logits only (llama.cpp's default too).
            out = net(ids, state=holder["state"], use_cache=True, mode="chunkwise", logits_to_keep=1)
            holder["state"] = out.state

    def decode(token: torch.Tensor) -> None:
        holder["state"] = step(token, holder["state"])[1]

    def reset() -> None:
        holder["state"] = None

    info["reset"] = reset
    info["compile_s"] = lambda: step.compile_s
    return prefill, decode, info


def _engine(
    engine: str,
    retnet_config: dict[str, Any],
    gguf: str | None,
    n_ctx: int,
    block: int,
    threads: int,
    llama: dict[str, bool],
    seed: int,
) -> tuple[Callable, Callable, dict[str, Any]]:
    """Prefill and decode callables of ``engine`` and facts about it (llama.cpp on ``gguf`` with room for
    ``n_ctx`` tokens and the ``llama`` settings, or a RetNet engine)."""
    if engine in LLAMACPP_ENGINES:
        return _llamacpp_engine(gguf, n_ctx, block, threads, llama, seed)
    return _retnet_engine(engine, retnet_config, seed)


LLAMA_DEFAULTS = {"flash_attn": True, "repack": True}
"""llama.cpp settings (``--llama-flash-attn``, ``--llama-repack``): flash attention; weights repacked into the
CPU backend's extra buffer types (its AMX / interleaved layouts for quantized types) when loaded."""


def _llamacpp_engine(gguf: str, n_ctx: int, block: int, threads: int, llama: dict[str, bool], seed: int):
    """Prefill and decode callables of ``llama_cpp.Llama`` on ``gguf`` (token ids in, logits of the last out)."""
    import llama_cpp
    import llama_cpp.llama as high_level

    settings = LLAMA_DEFAULTS | llama
    defaults = high_level.llama_cpp.llama_model_default_params

    def model_params():  # llama.cpp's use_extra_bufts, which Llama() does not take as an argument
        params = defaults()
        params.use_extra_bufts = settings["repack"]
        return params

    high_level.llama_cpp.llama_model_default_params = model_params
    try:
        llm = llama_cpp.Llama(
            model_path=gguf,
            n_ctx=n_ctx,
            n_batch=block,
            n_ubatch=block,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=settings["flash_attn"],
            seed=seed,
            verbose=False,
        )
    finally:
        high_level.llama_cpp.llama_model_default_params = defaults
    info = {"llama_cpp": llama_cpp.__version__, "n_ctx": llm.n_ctx(), "gguf_mib": Path(gguf).stat().st_size / MIB}
    info["reset"] = llm.reset
    return (lambda ids: llm.eval(ids[0].tolist())), (lambda token: llm.eval(token[0].tolist())), info


def block_of(engine: str, prefill_block: int, retnet_prefill_block: int | None) -> int:
    """Tokens per prefill call of ``engine``: llama.cpp's ``n_batch = n_ubatch = prefill_block``; RetNet's calls
    of ``retnet_prefill_block`` tokens (default the same)."""
    if engine in LLAMACPP_ENGINES or retnet_prefill_block is None:
        return prefill_block
    return retnet_prefill_block


def _feed(decode: Callable, tokens: Iterator[torch.Tensor]) -> None:
    decode(next(tokens))


def tail_rate(block_tokens: list[int], block_seconds: list[float], tail: int) -> float:
    """Tokens/s over the last blocks of a prefill that cover at least ``tail`` tokens (the rate at that depth)."""
    tokens = seconds = 0.0
    for n, t in zip(reversed(block_tokens), reversed(block_seconds)):
        tokens, seconds = tokens + n, seconds + t
        if tokens >= tail:
            break
    return tokens / seconds


def engine_case(
    engine: str,
    retnet_config: dict[str, Any],
    context: int,
    prefill_block: int,
    warmup: int,
    steps: int,
    threads: int,
    gguf: str | None = None,
    llama: dict[str, bool] | None = None,
    seed: int = 0,
    tail: int = 1024,
    retnet_prefill_block: int | None = None,
) -> dict[str, Any]:
    """One (engine, context) in a worker process: prefill ``context`` random ids from empty, then time steps."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    block = block_of(engine, prefill_block, retnet_prefill_block)
    n_ctx = context + warmup + steps + block
    prefill, decode, info = _engine(engine, retnet_config, gguf, n_ctx, prefill_block, threads, llama or {}, seed)
    info["load_s"] = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(seed)
    vocab = retnet_config["vocab_size"]
    # warm-up: one block and one step, then start again from an empty context
    prefill(torch.randint(0, vocab, (1, min(block, context)), generator=gen))
    t0 = time.perf_counter()
    decode(torch.randint(0, vocab, (1, 1), generator=gen))
    info["first_step_s"] = time.perf_counter() - t0
    info.pop("reset")()
    if callable(compile_s := info.pop("compile_s", None)):
        info["compile_s"] = compile_s()
    ids = torch.randint(0, vocab, (1, context), generator=gen)
    block_tokens, block_seconds = [], []
    for start in range(0, context, block):
        chunk = ids[:, start : start + block]
        t0 = time.perf_counter()
        prefill(chunk)
        block_seconds.append(time.perf_counter() - t0)
        block_tokens.append(chunk.shape[1])
    prefill_s = sum(block_seconds)
    tokens = iter(torch.randint(0, vocab, (warmup + steps, 1, 1), generator=gen))
    times = time_steps(partial(_feed, decode, tokens), torch.device("cpu"), warmup, steps)
    step_s = median_time(times)
    return {
        "engine": engine,
        "context": context,
        "step_ms": step_s * 1e3,
        "step_ms_min": min(times) * 1e3,
        "tokens_per_s": 1.0 / step_s,
        "prefill_tokens_per_s": context / prefill_s,
        "prefill_tail_tokens_per_s": tail_rate(block_tokens, block_seconds, tail),
        "prefill_s": prefill_s,
        "step_times_ms": [t * 1e3 for t in times],
        **info,
    }


def paired_case(
    engines: list[str],
    retnet_config: dict[str, Any],
    context: int,
    prefill_block: int,
    warmup: int,
    steps: int,
    threads: int,
    ggufs: dict[str, str],
    llama: dict[str, bool] | None = None,
    seed: int = 0,
    prefill_rounds: int = 1,
    retnet_prefill_block: int | None = None,
) -> dict[str, Any]:
    """Every engine in one worker process, timed interleaved at ``context``: ``prefill_rounds`` prefills of
    ``context`` ids from empty, one ``prefill_block`` per engine in turn, each round starting the turn at the next
    engine (so that no engine always follows the same one); then ``warmup`` steps each, then ``steps`` rounds of
    two decode steps per engine in turn, the second one timed. Returns ``{"engines": {engine: figures}}`` (step
    and prefill: the medians over the rounds). With ``retnet_prefill_block`` the turns cover the larger of the two
    blocks, each engine prefilling it in calls of its own block."""
    torch.set_num_threads(threads)
    vocab = retnet_config["vocab_size"]
    gen = torch.Generator().manual_seed(seed)
    blocks = {e: block_of(e, prefill_block, retnet_prefill_block) for e in engines}
    turn = max(blocks.values())
    n_ctx = context + warmup + 2 * steps + turn
    built = {
        e: _engine(e, retnet_config, ggufs.get(e), n_ctx, prefill_block, threads, llama or {}, seed) for e in engines
    }
    warm = torch.randint(0, vocab, (1, min(turn, context)), generator=gen)
    for engine, (prefill, decode, info) in built.items():  # warm-up (the compiled engine compiles here)
        prefill(warm[:, : blocks[engine]])
        decode(warm[:, :1])
        info["reset"]()
    ids = torch.randint(0, vocab, (1, context), generator=gen)
    prefill_of = {e: prefill for e, (prefill, _, _) in built.items()}
    reset_of = {e: info["reset"] for e, (_, _, info) in built.items()}
    prefill_s: dict[str, list[float]] = {e: [] for e in engines}
    for r in range(prefill_rounds):
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        for engine in order:
            reset_of[engine]()
            prefill_s[engine].append(0.0)
        for start in range(0, context, turn):
            for engine in order:
                stop, block = min(start + turn, context), blocks[engine]
                t0 = time.perf_counter()
                for at in range(start, stop, block):
                    prefill_of[engine](ids[:, at : min(at + block, stop)])
                prefill_s[engine][-1] += time.perf_counter() - t0
    # Each round, each engine takes two steps in turn, the second timed: the first brings the engine's caches
    # back to where a run of its own steps keeps them (timing the first step after another engine's would time
    # a cold cache, which costs the engines unequally).
    tokens = torch.randint(0, vocab, (warmup + 2 * steps, 1, 1), generator=gen)
    step_times: dict[str, list[float]] = {e: [] for e in engines}
    for _, decode, _ in built.values():
        for i in range(warmup):
            decode(tokens[i])
    for i in range(warmup, warmup + 2 * steps, 2):
        for engine, (_, decode, _) in built.items():
            decode(tokens[i])
            t0 = time.perf_counter()
            decode(tokens[i + 1])
            step_times[engine].append(time.perf_counter() - t0)
    out = {}
    for engine in engines:
        step_s = median_time(step_times[engine])
        prefill_median = median_time(prefill_s[engine])
        out[engine] = {
            "step_ms": step_s * 1e3,
            "tokens_per_s": 1.0 / step_s,
            "prefill_tokens_per_s": context / prefill_median,
            "prefill_s": prefill_median,
            "prefill_round_tokens_per_s": [context / t for t in prefill_s[engine]],
            "step_times_ms": [t * 1e3 for t in step_times[engine]],
        }
    return {"engines": out}


def paired_rows(context: int, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The report rows of a :func:`paired_case` (``mode`` "interleaved"), or one error row."""
    if "error" in result:
        return [{"engine": "all (interleaved)", "context": context, "mode": "interleaved", "error": result["error"]}]
    return [{"engine": e, "context": context, "mode": "interleaved", **r} for e, r in result["engines"].items()]


def row_of(engine: str, context: int, result: dict[str, Any]) -> dict[str, Any]:
    """A report row from a case's result (its error, or its figures with the peak RSS in MiB)."""
    row = {"engine": engine, "context": context, "mode": "own process", **result}
    peak = row.pop("process_peak_rss", None)
    if peak is not None:
        row["process_peak_rss_mib"] = peak / MIB
    return row


def cases(engines: list[str], contexts: list[int], long_contexts: list[int]) -> list[tuple[str, int]]:
    """(engine, context) pairs, shortest contexts first so that ``--max-minutes`` cuts the longest."""
    pairs = [(e, c) for e in engines for c in engine_contexts(e, contexts, long_contexts)]
    return sorted(pairs, key=lambda p: (p[1], engines.index(p[0])))


def _find(rows: list[dict[str, Any]], engine: str, context: int, mode: str = "own process") -> dict[str, Any] | None:
    for r in rows:
        if r.get("engine") == engine and r.get("context") == context and r.get("mode") == mode and "error" not in r:
            return r
    return None


def _own_rows(rows: list[dict[str, Any]], engine: str) -> list[dict[str, Any]]:
    """``engine``'s own-process rows that ran, by context."""
    own = (r for r in rows if r.get("engine") == engine and r.get("mode") == "own process" and "error" not in r)
    return sorted(own, key=lambda r: r["context"])


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals as ratios measured in this run (absent where an engine did not run): from the
    interleaved rows where there are any (the engines measured side by side), else from the own-process rows;
    the prefill's flatness from the own-process rows (the long contexts are RetNet's alone)."""
    mode = "interleaved" if any(r.get("mode") == "interleaved" for r in rows) else "own process"
    s: dict[str, Any] = {"ratios_from": mode}
    contexts = sorted({r["context"] for r in rows})
    for c in contexts:
        ours, theirs = _find(rows, "retnet-f32", c, mode), _find(rows, "llamacpp-f32", c, mode)
        if ours and theirs:
            s[f"f32_speedup_vs_llamacpp_f32_at_{c} (goal > 1)"] = theirs["step_ms"] / ours["step_ms"]
        compiled = _find(rows, "retnet-compiled", c, mode)
        if compiled and theirs:
            s[f"compiled_speedup_vs_llamacpp_f32_at_{c} (goal > 1)"] = theirs["step_ms"] / compiled["step_ms"]
        int8, q8 = _find(rows, "retnet-int8", c, mode), _find(rows, "llamacpp-q8_0", c, mode)
        if int8 and q8:
            goal = "(goal <= 1.2)" if c < 4096 else "(goal < 1)"
            s[f"int8_step_over_q8_0_at_{c} {goal}"] = int8["step_ms"] / q8["step_ms"]
    for c in contexts:
        theirs = _find(rows, "llamacpp-f32", c, mode)
        for name, engine in (("prefill", "retnet-f32"), ("int8_prefill", "retnet-int8")):
            ours = _find(rows, engine, c, mode)
            if ours and theirs:
                goal = " (goal >= 1.5)" if c == 1024 and engine == "retnet-f32" else ""
                s[f"{name}_speedup_vs_llamacpp_f32_at_{c}{goal}"] = (
                    ours["prefill_tokens_per_s"] / theirs["prefill_tokens_per_s"]
                )
        int8, q8 = _find(rows, "retnet-int8", c, mode), _find(rows, "llamacpp-q8_0", c, mode)
        if int8 and q8:
            s[f"int8_prefill_speedup_vs_q8_0_at_{c}"] = int8["prefill_tokens_per_s"] / q8["prefill_tokens_per_s"]
    ours = _own_rows(rows, "retnet-f32")
    if len(ours) >= 2:
        first, last = ours[0], ours[-1]
        key = f"retnet_f32_prefill_rate_at_{last['context']}_over_{first['context']} (goal >= 0.9, flat)"
        s[key] = last["prefill_tail_tokens_per_s"] / first["prefill_tail_tokens_per_s"]
        s[f"retnet_f32_step_at_{last['context']}_over_{first['context']}"] = last["step_ms"] / first["step_ms"]
    not_run = sorted({f"{r['engine']}: {r['error']}" for r in rows if "error" in r})
    if not_run:
        s["not_run"] = "; ".join(not_run)
    return s


COLUMNS = [
    "engine",
    "context",
    "mode",
    "step_ms",
    "tokens_per_s",
    "prefill_tokens_per_s",
    "prefill_tail_tokens_per_s",
    "process_peak_rss_mib",
    "compile_s",
    "error",
]


def _prepare_ggufs(args: argparse.Namespace, lcfg: Any, work_dir: Path) -> dict[str, str]:
    """The equal-size Llama saved and converted to each GGUF type the chosen engines need."""
    from retnet_benchmarks import llamacpp_gguf as g

    wanted = {e: t for e, t in LLAMACPP_ENGINES.items() if e in args.engines}
    if not wanted:
        return {}
    g.require_dependencies()
    converter = g.find_converter(args.llama_cpp_converter, work_dir)
    hf_dir = work_dir / "llama-hf"
    g.save_llama(build_llama(lcfg, args.seed), hf_dir, args.seed)
    paths = {}
    for engine, outtype in wanted.items():
        print(f"converting the Llama to GGUF {outtype} with {converter}", flush=True)
        paths[engine] = str(g.convert(converter, hf_dir, outtype, work_dir / f"llama-{outtype}.gguf"))
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the GGUF files, run each engine in its own process, write the report; returns the summary."""
    retnet_kwargs = dict(TINY if args.tiny else DECODE_100M)
    rcfg, lcfg = build_pair(retnet_kwargs)
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="retnet-llamacpp-"))
    try:
        ggufs = _prepare_ggufs(args, lcfg, work_dir)
        common = dict(retnet_config=retnet_kwargs, prefill_block=args.prefill_block, warmup=args.warmup)
        common["retnet_prefill_block"] = args.retnet_prefill_block
        llama = {"flash_attn": args.llama_flash_attn == "on", "repack": args.llama_repack == "on"}
        common |= dict(steps=args.steps, threads=args.threads, llama=llama)
        common["seed"] = args.seed
        budget = TimeBudget(args.max_minutes)
        rows = run_cases(
            args,
            "retnet_benchmarks.bench_llamacpp:engine_case",
            [
                Case({"engine": e, "context": c}, {"engine": e, "context": c, "gguf": ggufs.get(e), **common})
                for e, c in cases(args.engines, args.contexts, args.long_contexts)
            ],
            progress=_progress,
            timeout_s=args.case_timeout,
            budget=budget,
            threads=args.threads,
            to_row=lambda case, result: row_of(case.key["engine"], case.key["context"], result),
        )
        if args.interleaved and len(args.engines) > 1:
            results = run_cases(
                args,
                "retnet_benchmarks.bench_llamacpp:paired_case",
                [
                    Case(
                        {"context": c},
                        {
                            "engines": args.engines,
                            "context": c,
                            "ggufs": ggufs,
                            "prefill_rounds": args.prefill_rounds,
                            **common,
                        },
                    )
                    for c in args.contexts
                ],
                progress=lambda row: "\n".join(_progress(r) for r in row["rows"]),
                timeout_s=args.case_timeout,
                budget=budget,
                threads=args.threads,
                to_row=lambda case, result: {"rows": paired_rows(case.key["context"], result)},
            )
            rows += [r for result in results for r in result["rows"]]
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    summary = summarize(rows)
    summary["retnet_params"] = rcfg.num_parameters()
    summary["llama_params"] = count_parameters_of_config(lcfg)
    write_report(
        args.name,
        title="Batch-1 decoding and prefill on the CPU: RetNet vs llama.cpp (equal-size Llama, GGUF f32 / Q8_0)",
        rows=rows,
        out_dir=args.out_dir,
        columns=COLUMNS,
        summary=summary,
        notes=notes(args, rcfg, lcfg),
        chart=chart(rows),
    )
    return summary


def _progress(row: dict[str, Any]) -> str:
    mode = " (interleaved)" if row.get("mode") == "interleaved" else ""
    head = f"{row['engine']:>16} context {row['context']:>6}{mode}: "
    if "error" in row:
        return head + row["error"]
    return head + f"{row['step_ms']:.2f} ms/token, prefill {row['prefill_tokens_per_s']:.1f} tok/s"


def notes(args: argparse.Namespace, rcfg: Any, lcfg: Any) -> str:
    retnet_block = block_of(RETNET_ENGINES[0], args.prefill_block, args.retnet_prefill_block)
    retnet_blocks = (
        f"llama.cpp; RetNet in calls of {retnet_block}" if retnet_block != args.prefill_block else "both engines"
    )
    turn = max(args.prefill_block, retnet_block)
    text = f"""
- Models (random weights, seed {args.seed}): RetNet d={rcfg.hidden_size}, {rcfg.num_layers} layers,
  {rcfg.num_heads} heads, d_v=ffn={rcfg.value_dim}, vocab {rcfg.vocab_size}, {rcfg.num_parameters():,} parameters;
  the equal-size Llama (`retnet_benchmarks.baseline`, as in `bench decode`) d={lcfg.hidden_size},
  {lcfg.num_hidden_layers} layers, {lcfg.num_attention_heads} heads, intermediate {lcfg.intermediate_size},
  {count_parameters_of_config(lcfg):,} parameters.
- llama.cpp: the Llama saved with `save_pretrained` (safetensors) and a SentencePiece `tokenizer.model`, converted
  by llama.cpp's own `convert_hf_to_gguf.py` (`--outtype f32` and `--outtype q8_0`), run by `llama-cpp-python`
  (`Llama.eval` on token ids; n_batch = n_ubatch = {args.prefill_block}; flash attention
  {args.llama_flash_attn}; weight repacking into the CPU backend's extra buffer types {args.llama_repack}; KV
  cache in llama.cpp's default type, f16). The converter only recognises byte-level
  BPE tokenizers it has a hash for, so the Llama gets a SentencePiece vocabulary, for which the converter writes
  the `default` pre-tokenizer; ids go in directly, so the tokenizer takes no part in the timings.
- RetNet: every engine prefills chunkwise as the generation engine does (`model(ids, state=..., use_cache=True,
  mode="chunkwise", logits_to_keep=1)`: the last position's logits, as llama.cpp computes) and decodes through
  `retnet.models.make_decode_step(model, in_place=True)`, the step `retnet generate`/`chat`/`serve` run:
  `retnet-f32` eager, `retnet-compiled` with `compile=True` (torch.compile, inductor), `retnet-int8` eager on
  the model from `retnet.models.quantize_int8(model)` (PyTorch's per-channel int8 linear layers;
  `int8_weight_mib` in the JSON). The compile happens in the warm-up's first step: `compile_s` in the JSON
  (and the table) is that cost plus the timing that picks the step's products at construction (inside
  `load_s`), outside the timed steps; `first_step_s` is the warm-up's first step.
- Batch 1, {args.threads} thread(s) for both (`n_threads` = `n_threads_batch` = torch threads). Each (engine,
  context) runs in a fresh process: one warm-up block and step, then a prefill of `context` random token ids
  from empty in blocks of {args.prefill_block} ({retnet_blocks}), then the median of {args.steps} single-token
  steps after {args.warmup} warm-up steps at that context (logits included). `prefill_tokens_per_s`: context /
  prefill seconds; `prefill_tail_tokens_per_s`: the rate over the last blocks covering 1024 tokens (the rate at
  that depth). Contexts are built by real prefill only, never filled synthetically. These are the `own process`
  rows (and the chart).
- `interleaved` rows: at each of --contexts, one more process holds every engine and times them in turn:
  {args.prefill_rounds} prefill(s) of the context from empty, one {turn}-token block per engine in turn (each in
  calls of its own block), each round's turn starting at the next engine (the median round; all in
  `prefill_round_tokens_per_s`), then {args.warmup} warm-up steps each and {args.steps} rounds of two steps per
  engine in turn, the second timed (the first brings the engine's caches back to where its own run of steps
  keeps them; medians). This machine is shared and its speed drifts by tens of percent within minutes, so the
  own-process rows of two engines can see different machines; the summary's ratios come from the interleaved
  rows when there are any (`ratios_from`), the prefill's flatness from the own-process ones.
- Goals (issue 15): float32 faster than llama.cpp f32 at every context from 1K; int8 within 1.2x of Q8_0 at 1K
  and faster from 4K; prefill >= 1.5x llama.cpp's at 1K and flat to 128K.
"""
    return text + (f"- {args.note}\n" if args.note else "")


def chart(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retnet_benchmarks.report import style_log_axes

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for engine in ENGINES:
        pts = _own_rows(rows, engine)
        if not pts:
            continue
        x = [r["context"] for r in pts]
        style = "--s" if engine.startswith("llamacpp") else "-o"
        axes[0].plot(x, [r["step_ms"] for r in pts], style, label=engine)
        axes[1].plot(x, [r["prefill_tokens_per_s"] for r in pts], style, label=engine)
    style_log_axes(axes, "context length (tokens)", ("ms per decoded token (batch 1)", "prefill tokens/s"))
    fig.suptitle("RetNet vs llama.cpp on the CPU, same threads (equal-size models)")
    return fig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("llamacpp", help="batch-1 decode and prefill, RetNet vs llama.cpp (GGUF f32/Q8_0)")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="engines (default all)")
    p.add_argument("--contexts", type=positive_ints, default=[1024, 8192, 32768], help="contexts for every engine")
    p.add_argument(
        "--long-contexts",
        type=positive_ints_or_none,
        default=[],
        help="more contexts for retnet-f32 only, e.g. 131072 ('none' or omitted: none)",
    )
    p.add_argument("--threads", type=int, default=1, help="threads for every engine")
    p.add_argument("--prefill-block", type=int, default=512, help="prefill block (llama.cpp n_batch/n_ubatch)")
    p.add_argument(
        "--retnet-prefill-block",
        type=positive_int,
        default=None,
        help="RetNet's prefill calls in tokens (default: --prefill-block; `retnet generate` calls up to 2048)",
    )
    p.add_argument(
        "--prefill-rounds",
        type=positive_int,
        default=3,
        help="interleaved prefills from empty per context (median reported; each round starts at the next engine)",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--llama-cpp-converter",
        default=None,
        help="llama.cpp's convert_hf_to_gguf.py: the llama-cpp-python sdist (.tar.gz), a source folder or the script",
    )
    p.add_argument("--llama-flash-attn", choices=("on", "off"), default="on", help="llama.cpp flash attention")
    p.add_argument(
        "--llama-repack",
        choices=("on", "off"),
        default="on",
        help="llama.cpp's weight repacking into its CPU extra buffer types (AMX, interleaved; use_extra_bufts). "
        "'off' where that path crashes (seen: Q8_0 on an AMX Xeon, SIGSEGV)",
    )
    p.add_argument("--work-dir", default=None, help="keep the Hugging Face folder and GGUF files here")
    p.add_argument("--case-timeout", type=float, default=5400.0, help="seconds per engine before it is abandoned")
    TimeBudget.add_argument(p)
    p.add_argument(
        "--interleaved",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time every engine in one process, interleaved, at each of --contexts (default on)",
    )
    p.add_argument("--note", default="", help="a line added to the report's notes (e.g. how quiet the machine was)")
    p.add_argument("--tiny", action="store_true", help="toy model (smoke test)")
    p.add_argument("--in-process", action="store_true", help="no worker processes (smoke test)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR))
    p.add_argument("--name", default="llamacpp", help="report file name (<name>.json/.md/.png)")
    p.set_defaults(func=run)
