"""``retnet bench decode``: per-token decoding latency, tokens/s and memory vs context, RetNet vs Llama.

RetNet decodes with its O(1) recurrent step from a fixed-size state (gated RetNet too; the hybrid adds a KV
cache per attention layer, YOCO one shared KV cache); the baseline is Hugging Face
``LlamaForCausalLM`` (SDPA) decoding one token at a time from its ``DynamicCache``, both at the same
parameter count. Each (model, batch, context) runs in a fresh process so its peak memory is its own.
The context is built by a real prefill up to ``--prefill-max`` tokens (RetNet chunkwise, Llama through
its cache, in blocks of ``--prefill-block``; one row, replicated to the batch); beyond it the state or
KV caches (Llama's, the hybrid's and YOCO's) are filled with random values of the right length, since a
step's cost does not depend on them.

RetNet steps run through :func:`retnet.models.decode_step.make_decode_step` (the state updated in place, as
the decoding engine keeps it) along one *path*: ``eager``, ``compiled`` (``torch.compile``), ``int8``
(:func:`retnet.models.quantize.quantize_int8`), ``int8+compiled``, or ``forward`` (the model's general
``forward(mode="recurrent")``, for comparison). ``--compile``/``--quantize`` pick the main grid's path;
``--paths`` adds batch-1 RetNet rows on other paths at ``--path-contexts``. ``--model-dir`` measures int8's
quality cost: validation bits/byte of a trained model with float32 and with int8 weights.

``--models`` also takes the recurrent peers of :mod:`retnet_benchmarks.peers` (``mamba``, ``mamba2``,
``rwkv``: ``transformers`` models at RetNet's parameter count, stepping from their own caches through their
CPU reference paths); they prefill one row in one forward (its state copied to the batch), and beyond
``--prefill-max`` their fixed-size state comes from a ``--prefill-block`` prefill (a step's cost does not depend
on the context). ``--size 25m`` runs the ~25M models instead of the ~100M ones.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from retnet.models import RetNetConfig
from retnet_benchmarks.baseline import (
    DECODE_100M,
    TRAIN_25M,
    build_llama,
    build_pair,
    build_retnet,
    count_parameters,
    count_parameters_of_config,
    variant_config,
)
from retnet_benchmarks.harness import Case, run_cases
from retnet_benchmarks.measure import (
    GIB,
    TimeBudget,
    current_rss,
    median_time,
    peak_memory,
    pick_device,
    reset_peak_memory,
    time_against_bandwidth,
    time_steps,
)
from retnet_benchmarks.options import add_device, add_models, comma_choices, positive_ints, positive_ints_or_none
from retnet_benchmarks.peers import RECURRENT, peers_note
from retnet_benchmarks.report import DEFAULT_OUT_DIR, style_log_axes, write_report

DEFAULT_MODELS = ("retnet", "gated", "hybrid", "yoco", "llama")
MODELS = (*DEFAULT_MODELS, *RECURRENT)
SIZES = {"100m": DECODE_100M, "25m": TRAIN_25M}
MIB = 1024**2
PEERS_HOW = (
    "stepping from their own caches. They prefill one row in one forward, its state copied to the batch; RWKV's "
    "one-token steps of several rows run each row as a batch of one under `torch.func.vmap` (`transformers`' own "
    "step broadcasts the rows together when batch > 1)."
)


def llama_cache_bytes(llama_config: Any, batch: int, context: int) -> int:
    """Bytes of Llama's float32 KV cache holding ``context`` tokens for ``batch`` rows."""
    head_dim = llama_config.hidden_size // llama_config.num_attention_heads
    per_token = 2 * llama_config.num_hidden_layers * llama_config.num_key_value_heads * head_dim * 4
    return per_token * batch * context


def _cache_nbytes(cache: Any) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def _random_kv(cache: Any, context: int, scale: float = 0.02) -> Any:
    """A :class:`KVCache` shaped like ``cache`` but ``context`` tokens long, with random keys and values."""
    from retnet.layers.attention import KVCache

    B, H, _, D = cache.k.shape
    k = torch.randn(B, H, context, D, device=cache.k.device, dtype=cache.k.dtype) * scale
    return KVCache(k, torch.randn_like(k) * scale)


def synthetic_state(state: Any, context: int) -> Any:
    """``state`` with every part at ``context`` tokens: random retention states, random KV caches."""
    from retnet.layers.attention import KVCache

    def fill(x: Any) -> Any:
        if isinstance(x, KVCache):
            return _random_kv(x, context)
        if isinstance(x, torch.Tensor):
            return torch.randn_like(x) * 0.02
        return x  # None: YOCO's cross-attention layers keep nothing of their own

    state.layers = [fill(t) for t in state.layers]
    state.shared = fill(state.shared)
    state.offset = torch.full_like(state.offset, context)
    return state


def _weights_read_per_step(model: torch.nn.Module, batch: int) -> int:
    """Weight bytes a decode step reads: every matrix once, but only ``batch`` rows of the embedding table."""
    total = 0
    for name, p in {id(p): (n, p) for n, p in model.named_parameters()}.values():
        if "embed" in name and not getattr(model.config, "tie_word_embeddings", False):
            total += batch * p.shape[1] * p.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


PATHS = ("forward", "eager", "compiled", "int8", "int8+compiled")


def path_from_flags(compile: bool, quantize: str) -> str:
    """The path ``--compile``/``--quantize`` name (``eager`` when neither is given)."""
    if quantize == "int8":
        return "int8+compiled" if compile else "int8"
    return "compiled" if compile else "eager"


def decode_case(
    model: str,
    retnet_config: dict[str, Any],
    batch: int,
    context: int,
    prefill_max: int,
    prefill_block: int,
    warmup: int,
    steps: int,
    threads: int,
    device: str,
    seed: int = 0,
    bandwidth_mib: int = 512,
    path: str = "eager",
) -> dict[str, Any]:
    """One measurement (runs inside a worker process): build the context, then time single-token steps."""
    from retnet.models.decode_step import make_decode_step
    from retnet.models.quantize import quantize_int8, quantized_weight_bytes

    torch.set_num_threads(threads)
    dev = pick_device(device)
    probe_bytes = bandwidth_mib * MIB
    reset_peak_memory(dev)
    rcfg, lcfg = build_pair(retnet_config)
    if model in RECURRENT:
        return _peer_case(
            model, rcfg, batch, context, prefill_max, prefill_block, warmup, steps, dev, seed, probe_bytes
        )
    if model != "llama":
        rcfg = build_pair(variant_config(model, retnet_config))[0]
    net = (build_llama(lcfg, seed) if model == "llama" else build_retnet(rcfg, seed)).to(dev)
    params = count_parameters(net)
    if model == "llama":
        path = "hf"
    elif path.startswith("int8"):
        quantize_int8(net)
    gen = torch.Generator().manual_seed(seed)
    vocab = rcfg.vocab_size
    real = context <= prefill_max
    t0 = time.perf_counter()
    with torch.no_grad():
        if model != "llama":
            state = None
            if real:
                ids = torch.randint(0, vocab, (1, context), generator=gen).to(dev)
                for start in range(0, context, prefill_block):
                    _, state = net.model(
                        ids[:, start : start + prefill_block], state=state, use_cache=True, mode="chunkwise"
                    )
                state = state.select([0] * batch)
            else:
                _, probe = net.model(torch.zeros(batch, 1, dtype=torch.long, device=dev), use_cache=True)
                state = synthetic_state(probe, context)
                del probe
            memo_bytes = state.nbytes()
        else:
            from transformers import DynamicCache

            from retnet.hf.cache import cache_argument

            cache_kw = cache_argument(net)  # the same name for LlamaModel and LlamaForCausalLM
            cache = DynamicCache(config=lcfg)
            if real:
                ids = torch.randint(0, vocab, (1, context), generator=gen).to(dev)
                for start in range(0, context, prefill_block):
                    net.model(input_ids=ids[:, start : start + prefill_block], **{cache_kw: cache}, use_cache=True)
                if batch > 1:
                    cache.batch_repeat_interleave(batch)
            else:
                heads = lcfg.num_key_value_heads
                head_dim = lcfg.hidden_size // lcfg.num_attention_heads
                for i in range(lcfg.num_hidden_layers):
                    k = torch.empty(batch, heads, context, head_dim, device=dev).normal_(generator=None)
                    v = torch.empty_like(k).normal_()
                    cache.update(k, v, i)
                    del k, v
            memo_bytes = _cache_nbytes(cache)
    fill_s = time.perf_counter() - t0
    rss_before = current_rss()
    reset_peak_memory(dev)
    tokens = torch.randint(0, vocab, (batch, 1), generator=gen).to(dev)
    holder: dict[str, Any] = {"cache": cache} if model == "llama" else {"state": state}
    fast = None if path in ("hf", "forward") else make_decode_step(net, compile="compiled" in path, in_place=True)

    def step() -> None:
        with torch.no_grad():
            if fast is not None:
                fast(tokens, holder["state"])
            elif model != "llama":
                out = net(tokens, state=holder["state"], use_cache=True, mode="recurrent")
                holder["state"] = out.state
            else:
                net(input_ids=tokens, **{cache_kw: holder["cache"]}, use_cache=True)

    if fast is not None and fast.compiled:
        step()  # the compilation (its time is compile_s), never inside the timed steps
    times = time_steps(step, dev, warmup, steps)
    memory = peak_memory(dev)  # before the bandwidth probe's tensor exists
    floor_times = time_against_bandwidth(step, dev, steps, probe_bytes)
    products_s = _products_time(fast, batch, dev, warmup, steps) if path == "eager" else None
    weights_read = _weights_read_per_step(net, batch) + quantized_weight_bytes(net)
    case = {
        "model": model,
        "path": path,
        "batch": batch,
        "context": context,
        "context_fill": "prefill" if real else "synthetic",
        "params": params,
    }
    row = _timed_row(
        case,
        times,
        memory,
        floor_times,
        weights_read,
        memo_bytes,
        dev,
        rss_before,
        fill_s,
        getattr(fast, "compile_s", None),
    )
    if fast is not None and fast.products is not None:
        row["products"] = fast.products  # how the compiled CPU step multiplies ("rows" or "blas")
    if products_s is not None:
        row["products_ms"] = products_s * 1e3
        row["products_over_floor"] = products_s * 1e3 / row["floor_ms"]
        row["step_over_products"] = row["step_ms"] / (products_s * 1e3)
    return row


def _products_time(fast: Any, batch: int, dev: torch.device, warmup: int, steps: int) -> float | None:
    """Median seconds of the step's float matrix products alone, back to back (the same matrices and layouts,
    ``batch`` rows): a step with nothing but its weight reads. ``None`` for batches the step runs on packed
    weights instead."""
    from retnet.models.decode_step import PACK_MIN_BATCH

    if batch >= PACK_MIN_BATCH:
        return None
    mats = fast.weight_products()
    rows = {w.shape[0]: torch.randn(batch, w.shape[0], dtype=w.dtype, device=w.device) for w in mats}

    def products() -> None:
        with torch.no_grad():
            for w in mats:
                rows[w.shape[0]] @ w

    return median_time(time_steps(products, dev, warmup, steps))


def _timed_row(
    case: dict[str, Any],
    times: list[float],
    memory: int,
    floor_times: tuple[list[float], float],
    weights_read: int,
    memo_bytes: int,
    dev: torch.device,
    rss_before: int,
    fill_s: float,
    compile_s: float | None,
) -> dict[str, Any]:
    """One result row: ``case`` (model, path, batch, context, fill, params) plus the timings of its steps, the
    peak ``memory``, and the bandwidth floor (bytes read per step / bandwidth) with the step's ratio to it,
    both from ``floor_times`` (steps and bandwidth probes interleaved, :func:`time_against_bandwidth`)."""
    step_s = median_time(times)
    paired_steps, bandwidth = floor_times
    paired_s = median_time(paired_steps)
    floor_s = (weights_read + memo_bytes) / bandwidth
    return {
        **case,
        "weights_read_mib": weights_read / MIB,
        "compile_s": compile_s,
        "step_ms": step_s * 1e3,
        "step_ms_min": min(times) * 1e3,
        "tokens_per_s": case["batch"] / step_s,
        "memory_mib": memory / MIB,
        "rss_before_decode_mib": rss_before / MIB if dev.type == "cpu" else None,
        "state_or_cache_mib": memo_bytes / MIB,
        "bandwidth_gbs": bandwidth / 1e9,
        "floor_ms": floor_s * 1e3,
        "step_over_floor": paired_s / floor_s,
        "paired_step_ms": paired_s * 1e3,
        "fill_s": fill_s,
        "step_times_ms": [t * 1e3 for t in times],
    }


def _peer_case(
    model: str,
    rcfg: RetNetConfig,
    batch: int,
    context: int,
    prefill_max: int,
    prefill_block: int,
    warmup: int,
    steps: int,
    dev: torch.device,
    seed: int,
    probe_bytes: int,
) -> dict[str, Any]:
    """:func:`decode_case` for a recurrent peer: prefill one row in one forward, copy its state to the batch,
    then time one-token steps."""
    from retnet_benchmarks.peers import build_baseline, repeat_rows, start, state_nbytes, step

    net, info = build_baseline(model, rcfg, seed)
    net = net.to(dev)
    real = context <= prefill_max
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, rcfg.vocab_size, (1, context if real else min(context, prefill_block)), generator=gen)
    t0 = time.perf_counter()
    with torch.no_grad():
        _, state = start(net, ids.to(dev))
        state = repeat_rows(state, batch) if batch > 1 else state
    fill_s = time.perf_counter() - t0
    memo_bytes = state_nbytes(state)
    rss_before = current_rss()
    reset_peak_memory(dev)
    tokens = torch.randint(0, rcfg.vocab_size, (batch, 1), generator=gen).to(dev)
    holder = {"state": state}

    def one() -> None:
        with torch.no_grad():
            holder["state"] = step(net, tokens, holder["state"])[1]

    times = time_steps(one, dev, warmup, steps)
    memory = peak_memory(dev)
    floor_times = time_against_bandwidth(one, dev, steps, probe_bytes)
    fill = "prefill" if real else "synthetic"
    case = {"model": model, "path": "hf-reference", "batch": batch, "context": context, "context_fill": fill}
    case["params"] = info["params"]
    return _timed_row(
        case, times, memory, floor_times, _weights_read_per_step(net, batch), memo_bytes, dev, rss_before, fill_s, None
    )


def _row_path(model: str, path: str) -> str:
    """The path a row reports: Llama's own step, the peers' reference paths, else RetNet's ``path``."""
    return "hf" if model == "llama" else "hf-reference" if model in RECURRENT else path


def _over_budget(
    model: str, batch: int, context: int, lcfg: Any, variants: dict[str, RetNetConfig], budget_gib: float
) -> str | None:
    """Why a case is skipped (its KV cache would exceed ``--memory-budget-gib``), else None."""
    if model == "llama":
        need = llama_cache_bytes(lcfg, batch, context)
    elif model in RECURRENT:
        return None  # a fixed-size state
    else:
        cfg = variants[model]  # the KV caches' part only (hybrid, YOCO): retention states are fixed
        need = cfg.state_nbytes(context, batch_size=batch) - cfg.state_nbytes(0, batch_size=batch)
    if need > budget_gib * GIB:
        return f"skipped: KV cache would need {need / GIB:.1f} GiB > budget {budget_gib:g} GiB"
    return None


def _grid(contexts_b1: list[int], contexts_b8: list[int], batch_large: int) -> list[tuple[int, int]]:
    return [(1, c) for c in contexts_b1] + [(batch_large, c) for c in contexts_b8]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the grid, write the report; returns the summary."""
    from retnet.cli.errors import CLIError
    from retnet.models.quantize import QuantizeError, check_quantize

    dev = pick_device(args.device)
    load_start = os.getloadavg()
    try:
        check_quantize(args.quantize, dev)
    except QuantizeError as exc:
        raise CLIError(str(exc)) from None
    if dev.type != "cpu":
        args.paths = [p for p in args.paths if not p.startswith("int8")]  # the int8 kernels are CPU-only
    retnet_kwargs = dict(SIZES[args.size])
    if args.tiny:
        retnet_kwargs = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=2, value_dim=96, ffn_dim=96)
    rcfg, lcfg = build_pair(retnet_kwargs)
    variants = {m: RetNetConfig(**variant_config(m, retnet_kwargs)) for m in args.models if m in DEFAULT_MODELS[:4]}
    main_path = path_from_flags(args.compile, args.quantize)
    cases = [
        (model, batch, context, main_path)
        for batch, context in _grid(args.contexts, args.batch8_contexts, args.large_batch)
        for model in args.models
    ]
    cases += [
        ("retnet", 1, context, path)
        for context in _path_contexts(args)
        for path in args.paths
        if path != main_path and "retnet" in args.models
    ]
    common = dict(retnet_config=retnet_kwargs, prefill_max=args.prefill_max, prefill_block=args.prefill_block)
    common |= dict(warmup=args.warmup, steps=args.steps, threads=args.threads, device=str(dev))
    common["bandwidth_mib"] = 16 if args.tiny else 512
    rows = run_cases(
        args,
        "retnet_benchmarks.bench_decode:decode_case",
        [
            Case(
                {"model": m, "path": _row_path(m, path), "batch": b, "context": c},
                dict(common, model=m, batch=b, context=c, path=path),
                _over_budget(m, b, c, lcfg, variants, args.memory_budget_gib),
            )
            for m, b, c, path in cases
        ],
        progress=_progress,
        timeout_s=args.case_timeout,
        budget=TimeBudget(args.max_minutes),
    )
    summary = summarize(rows, args.large_batch, main_path)
    if args.model_dir:
        quality = int8_quality(args.model_dir, args.quality_batches, args.threads)
        print(f"quality: {quality}", flush=True)
        summary.update(quality)
    summary["retnet_params"] = rcfg.num_parameters()
    summary["llama_params"] = count_parameters_of_config(lcfg)
    for model, cfg in variants.items():
        summary[f"{model}_params"] = cfg.num_parameters()
    if any(m in RECURRENT for m in args.models):
        from retnet_benchmarks.peers import REFERENCE_PATH_NOTE, peer_parameters

        for model in (m for m in args.models if m in RECURRENT):
            summary[f"{model}_params"] = peer_parameters(model, rcfg)
        summary["peers_note"] = REFERENCE_PATH_NOTE
    write_report(
        args.name,
        title="Decoding: RetNet (recurrent) and its variants vs Llama (HF transformers, SDPA + KV cache)",
        rows=rows,
        out_dir=args.out_dir,
        columns=COLUMNS,
        summary=summary,
        notes=notes(args, rcfg, lcfg, dev)
        + peers_note(args.models, "`path` hf-reference", PEERS_HOW)
        + _load_note(load_start, os.getloadavg()),
        chart=chart(rows),
    )
    return summary


COLUMNS = [
    "model",
    "path",
    "batch",
    "context",
    "context_fill",
    "step_ms",
    "tokens_per_s",
    "memory_mib",
    "state_or_cache_mib",
    "floor_ms",
    "step_over_floor",
    "compile_s",
    "error",
]


def _progress(row: dict[str, Any]) -> str:
    head = f"{row['model']:>6} {row.get('path', ''):>13} batch {row['batch']} context {row['context']:>6}: "
    if "error" in row:
        return head + row["error"]
    return head + f"{row['step_ms']:.2f} ms/step, {row['tokens_per_s']:.1f} tok/s, {row['memory_mib']:.0f} MiB"


def _find(rows: list[dict[str, Any]], model: str, batch: int, context: int, path: str | None = None):
    """The row that ran for (model, batch, context) on ``path`` (any path when ``None``), else ``None``."""
    for r in rows:
        if (r.get("model"), r.get("batch"), r.get("context")) == (model, batch, context) and "error" not in r:
            if path is None or r.get("path") in (path, "hf", "hf-reference"):
                return r
    return None


def summarize(rows: list[dict[str, Any]], large_batch: int, main_path: str = "eager") -> dict[str, Any]:
    """The headline figures against the issue's goals (``None`` where a case did not run)."""
    s: dict[str, Any] = {"main_path": main_path}
    main = [r for r in rows if r.get("path") in (main_path, "hf", "hf-reference")]
    r8, l8 = _find(main, "retnet", large_batch, 8192), _find(main, "llama", large_batch, 8192)
    if r8 and l8:
        s[f"throughput_ratio_b{large_batch}_8k (goal >= 10)"] = r8["tokens_per_s"] / l8["tokens_per_s"]
        s[f"memory_fraction_b{large_batch}_8k (goal <= 0.30)"] = r8["memory_mib"] / l8["memory_mib"]
    b1 = sorted(
        (r for r in main if r.get("batch") == 1 and r.get("model") == "retnet" and "error" not in r),
        key=lambda r: r["context"],
    )
    if len(b1) >= 2:
        s[f"retnet_latency_{b1[-1]['context']}_over_{b1[0]['context']} (goal <= 1.05)"] = (
            b1[-1]["step_ms"] / b1[0]["step_ms"]
        )
        if "step_ms_min" in b1[0]:
            s[f"retnet_latency_{b1[-1]['context']}_over_{b1[0]['context']} (fastest steps)"] = (
                b1[-1]["step_ms_min"] / b1[0]["step_ms_min"]
            )
    for model in MODELS:
        ratios = [
            r["step_over_floor"] for r in main if r.get("batch") == 1 and r.get("model") == model and "error" not in r
        ]
        if ratios:
            s[f"{model}_b1_step_over_floor_max" + (" (goal <= 1.3)" if model == "retnet" else "")] = max(ratios)
            s[f"{model}_b1_step_over_floor_min"] = min(ratios)
    split = [r for r in main if r.get("model") == "retnet" and r.get("batch") == 1 and "products_ms" in r]
    if split:  # where the step's time goes: its weight products alone vs the floor, the rest vs the products
        s["retnet_b1_products_over_floor_min"] = min(r["products_over_floor"] for r in split)
        s["retnet_b1_products_over_floor_max"] = max(r["products_over_floor"] for r in split)
        s["retnet_b1_step_over_products_max"] = max(r["step_over_products"] for r in split)
    for r in rows:  # the other paths against the main one, same context, batch 1
        base = _find(main, "retnet", 1, r["context"]) if r.get("model") == "retnet" and r.get("batch") == 1 else None
        if base is None or "error" in r or r.get("path") == main_path:
            continue
        goal = " (goal >= 1.7)" if r["path"].startswith("int8") and main_path == "eager" else ""
        s[f"{r['path']}_over_{main_path}_tokens_per_s_{r['context']}{goal}"] = r["tokens_per_s"] / base["tokens_per_s"]
        if r.get("compile_s") is not None:
            s[f"{r['path']}_compile_s_{r['context']}"] = r["compile_s"]
    for r in main:
        if r.get("compile_s") is not None and r.get("batch") == 1:
            s[f"{main_path}_compile_s_{r['context']}"] = r["compile_s"]
    missing = [
        f"b{r['batch']}@{r['context']}: {r['error']}" for r in rows if r.get("model") == "llama" and "error" in r
    ]
    if any(r.get("model") == "llama" for r in rows):
        s["llama_not_run"] = "; ".join(missing) if missing else "none"
    others = [
        f"{r['model']} {r.get('path')} b{r['batch']}@{r['context']}: {r['error']}"
        for r in rows
        if r.get("model") != "llama" and "error" in r
    ]
    if others:
        s["retnet_cases_not_run"] = "; ".join(others)
    return s


def _path_contexts(args: argparse.Namespace) -> list[int]:
    """``--path-contexts``, or by default the batch-1 contexts among 1K and 8K (else the shortest)."""
    if args.path_contexts is not None:
        return args.path_contexts
    picked = [c for c in args.contexts if c in (1024, 8192)]
    return picked or args.contexts[:1]


def int8_quality(model_dir: str, max_batches: int | None, threads: int) -> dict[str, Any]:
    """Validation bits/byte of a trained model directory with float32 weights and with int8 weights.

    The validation split and sequence length are the run's own (its ``training.json``), scored by
    :func:`retnet.training.evaluate.evaluate`, the function behind ``retnet eval``.
    """
    from pathlib import Path

    from retnet.cli.errors import CLIError
    from retnet.data.batching import encode_tensor
    from retnet.data.corpus import load_corpus, split_corpus
    from retnet.data.tokenizers import Tokenizer
    from retnet.models import CheckpointError, load_pretrained
    from retnet.models.directory import TRAINING_INFO_FILE, read_json_file
    from retnet.models.quantize import quantize_int8
    from retnet.training.evaluate import evaluate

    torch.set_num_threads(threads)
    path = Path(model_dir)
    try:
        run_cfg = read_json_file(path / TRAINING_INFO_FILE, what="training info").get("train_config", {})
        tokenizer = Tokenizer.load(path)
        _, val_text = split_corpus(load_corpus(run_cfg.get("data") or None), run_cfg.get("val_fraction", 0.05))
        seq_len = run_cfg.get("seq_len", 256)
        tokens = encode_tensor(tokenizer, val_text)
        byte_lengths = torch.tensor(tokenizer.byte_lengths())
        out: dict[str, Any] = {"quality_model_dir": str(path), "quality_seq_len": seq_len}
        for name in ("float32", "int8"):
            model = load_pretrained(path)
            if name == "int8":
                quantize_int8(model)
            res = evaluate(model, tokens, byte_lengths, seq_len=seq_len, batch_size=16, max_batches=max_batches)
            out[f"val_bits_per_byte_{name}"] = res.bits_per_byte
            out["quality_tokens"] = res.tokens
    except (CheckpointError, ValueError, OSError) as exc:
        raise CLIError(f"--model-dir {model_dir!r}: {str(exc).splitlines()[0]}") from None
    out["int8_bits_per_byte_change (goal within 1%)"] = (
        out["val_bits_per_byte_int8"] / out["val_bits_per_byte_float32"] - 1
    )
    return out


def _load_note(start: tuple[float, ...], end: tuple[float, ...]) -> str:
    return f"- Load average (1/5/15 min) at the start: {'/'.join(f'{x:.1f}' for x in start)}; at the end: " + (
        f"{'/'.join(f'{x:.1f}' for x in end)} (2 cores).\n"
    )


def notes(args: argparse.Namespace, rcfg: Any, lcfg: Any, dev: torch.device) -> str:
    mem = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "peak RSS (VmHWM) of the case's own process"
    return f"""
- Models: RetNet d={rcfg.hidden_size}, {rcfg.num_layers} layers, {rcfg.num_heads} heads, d_v=ffn={rcfg.value_dim},
  vocab {rcfg.vocab_size}, {rcfg.num_parameters():,} parameters; Llama (`transformers.LlamaForCausalLM`, SDPA,
  `DynamicCache`) d={lcfg.hidden_size}, {lcfg.num_hidden_layers} layers, {lcfg.num_attention_heads} heads,
  intermediate {lcfg.intermediate_size}, {count_parameters_of_config(lcfg):,} parameters. float32, `torch.no_grad`.
- Variants (at RetNet's size, FFN width solved to match): gated RetNet; hybrid (gated retention with softmax
  attention every 4th layer, each with its own KV cache); YOCO (gated self-decoder, cross-attention decoder on one
  shared KV cache). All decode with `mode="recurrent"`.
- RetNet step paths (`path`): `eager` is `retnet.models.make_decode_step` (one token per row, retention
  state updated in place; on the CPU linear weights laid out input-major, and batches of >= 4 rows on
  oneDNN-packed weight copies), `compiled` the same under `torch.compile` (inductor on the CPU; `compile_s` is the
  first call's time; `products`: how its one-row products run, `blas` or `rows`, picked by timing at
  construction), `int8` with every linear layer's weights int8 (`retnet.models.quantize_int8`: PyTorch's
  per-channel dynamic int8 linear; the step fuses each block's q/k/v/g and FFN input linears), `forward` the
  model's general `forward(mode="recurrent")`. The main grid
  runs `{path_from_flags(args.compile, args.quantize)}`; Llama is HF's own step (`hf`).
- Each (model, batch, context) runs in a fresh process with {args.threads} torch threads. Step time: median of
  {args.steps} single-token steps (logits included) after {args.warmup} warm-up steps.
- Context: a real prefill (random tokens, one row replicated to the batch; RetNet chunkwise, Llama through its
  KV cache, blocks of {args.prefill_block}) up to {args.prefill_max} tokens; longer contexts are filled
  synthetically (random state / random KV cache of the right size; a step's cost does not depend on the values).
- Memory: {mem}, from after the context is built (the peak is reset then) through decoding: weights, the
  state or KV cache, the step's temporaries and (CPU) the Python/torch runtime. `state_or_cache_mib` is the
  state / KV cache alone.
- Floor: (bytes of weights read per step + state or KV cache bytes) / the read bandwidth measured in the same
  process with the same thread count (two reads of a 512 MiB float32 tensor, 16 MiB with --tiny: its sum, and
  a one-row product `ones[1, 1024] @ x[1024, n]`; the faster one's rate, since which read streams faster
  depends on the CPU), measured interleaved with the steps: after the timed steps, {args.steps} rounds of two
  steps (the second timed: the first brings the caches back after the reads swept them) and the two timed
  reads, so that step and bandwidth see the same moment of this shared machine (its bandwidth drifts by 20-30%
  within minutes). `bandwidth_gbs` is the faster read's median rate, `paired_step_ms` the median of those
  steps, and `step_over_floor` = paired_step_ms / floor. Weights read: every matrix once (int8 matrices at one byte per
  weight plus their scales), one embedding row per sequence; the state is counted once (read), its write-back
  (as many bytes again) is not.
- Products (RetNet's eager path, batches the step does not pack; the compiled step runs its own kernels):
  `products_ms` is the median time of the step's weight products alone, back to back, the same matrices in the
  same layouts (`DecodeStep.weight_products`), so `products_over_floor` is how close the BLAS one-row products
  come to the read bandwidth, and `step_over_products` what everything else in a step (norms, rotation,
  recurrence, gating, dispatch) adds.
- int8 quality (when `--model-dir` is given): validation bits/byte of that trained model, float32 vs int8
  weights, the run's own validation split and sequence length, scored by the function behind `retnet eval`.
- Cases whose estimated KV cache exceeds --memory-budget-gib ({args.memory_budget_gib:g} GiB) are skipped
  with the reason (the machine is shared).
- The machine is shared with other jobs (other engineers' builds and tests; load average in the run's
  header): every figure carries that noise, and a loaded machine lowers the measured bandwidth and the step
  speed unevenly.
"""


def chart(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    keys = sorted({(r["model"], r.get("path", ""), r["batch"]) for r in rows})
    for model, path, batch in keys:
        pts = sorted(
            (
                r
                for r in rows
                if (r["model"], r.get("path", ""), r["batch"]) == (model, path, batch) and "error" not in r
            ),
            key=lambda r: r["context"],
        )
        if not pts:
            continue
        x = [r["context"] for r in pts]
        style = "--s" if model == "llama" else "-o"
        label = f"{model} {path} batch {batch}" if model != "llama" else f"llama batch {batch}"
        axes[0].plot(x, [r["step_ms"] for r in pts], style, label=label)
        axes[1].plot(x, [r["tokens_per_s"] for r in pts], style, label=label)
        axes[2].plot(x, [r["memory_mib"] for r in pts], style, label=label)
    style_log_axes(axes, "context length (tokens)", ("ms per step", "tokens/s", "peak memory (MiB)"))
    fig.suptitle("Decoding: RetNet recurrent vs Llama + KV cache (same parameter count)")
    return fig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("decode", help="decoding latency/throughput/memory vs context, RetNet vs Llama")
    p.add_argument(
        "--contexts",
        type=positive_ints,
        default=[1024, 2048, 4096, 8192, 16384, 32768, 65536],
        help="context lengths at batch 1",
    )
    p.add_argument(
        "--batch8-contexts",
        type=positive_ints_or_none,
        default=[1024, 2048, 4096, 8192, 16384, 32768],
        help="context lengths at the large batch ('none': no large-batch cases)",
    )
    p.add_argument("--large-batch", type=int, default=8)
    p.add_argument("--prefill-max", type=int, default=8192, help="longest context built by a real prefill")
    p.add_argument("--prefill-block", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="torch threads per case")
    add_device(p)
    p.add_argument(
        "--memory-budget-gib", type=float, default=10.0, help="skip Llama cases whose KV cache would exceed this"
    )
    p.add_argument("--case-timeout", type=float, default=1200.0, help="seconds per case before it is abandoned")
    TimeBudget.add_argument(p)
    add_models(p, MODELS, DEFAULT_MODELS, RECURRENT)
    p.add_argument("--size", choices=tuple(SIZES), default="100m", help="model size (default 100m; 25m: byte vocab)")
    p.add_argument(
        "--paths",
        type=comma_choices(PATHS, "paths", allow_none=True),
        default=["forward", "compiled", "int8"],
        help=f"comma-separated RetNet step paths also timed at batch 1 ({', '.join(PATHS)}; 'none': only the main one)",
    )
    p.add_argument(
        "--path-contexts",
        type=positive_ints,
        default=None,
        help="contexts of the --paths rows (default: 1024 and 8192)",
    )
    p.add_argument("--model-dir", default=None, help="trained model directory: validation bits/byte, float32 vs int8")
    p.add_argument("--quality-batches", type=int, default=None, help="limit the quality evaluation to N batches")
    p.add_argument("--tiny", action="store_true", help="toy model (smoke test)")
    p.add_argument("--in-process", action="store_true", help="no worker processes (smoke test; memory is shared)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR))
    p.add_argument("--name", default="decode", help="report file name (<name>.json/.md/.png)")
    p.set_defaults(func=run, decode_speed_flags=True)  # + --compile, --quantize
