"""``retnet bench serve``: the report's schema from toy figures (the real run is a command, not a test)."""

from __future__ import annotations

import json

from retnet.cli.main import build_parser
from retnet_benchmarks import bench_serve
from retnet_benchmarks.report import write_report


def test_summary_and_report_schema(tmp_path):
    args = build_parser().parse_args(["bench", "serve", "--turns", "3", "--out", str(tmp_path)])
    assert args.clients == 32 and args.duration == 60 and args.turns == 3 and args.threads == 1
    rows = [
        {"turn": k, "ttft_stateful_ms": 10.0 + k % 2, "ttft_resend_ms": 10.0 * k,
         "prompt_tokens_stateful": 70, "prompt_tokens_resend": 70 * k}
        for k in (1, 2, 3)
    ]  # fmt: skip
    load = {
        "clients": 32, "duration_s": 60.0, "requests_completed": 100, "errors": 0, "first_errors": [],
        "tokens_per_s": 50.0, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "ttft_p50_ms": 0.5, "ttft_p99_ms": 0.9,
        "rss_start_mb": 400.0, "rss_end_mb": 404.0, "rss_max_mb": 405.0, "rss_growth_pct": 1.0,
        "rss_series": [(0.0, 399.0), (11.0, 400.0), (70.0, 404.0)],
    }  # fmt: skip
    summary = bench_serve.summarize(rows, load, 1234, args)
    assert summary["ttft_stateful_turn3_over_turn2"] == round(11 / 10, 3)
    assert summary["ttft_resend_turn3_over_turn2"] == 1.5
    assert summary["goal_stateful_within_20pct"] and summary["goal_no_errors"] and summary["goal_rss_growth_below_5pct"]
    paths = write_report("serve", title="t", rows=rows, out_dir=tmp_path, summary=summary,
                         chart=bench_serve._chart(rows, load, args))  # fmt: skip
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["load_tokens_per_s"] == 50.0 and len(data["rows"]) == 3 and paths["png"].stat().st_size


def test_percentile_and_messages():
    assert bench_serve._pct([3.0, 1.0, 2.0], 0.5) == 2.0 and bench_serve._pct([1.0] * 98 + [9.0, 9.0], 0.99) == 9.0
    msg = bench_serve._user_message(2, 5, 120)
    assert len(msg) == 120 and msg != bench_serve._user_message(2, 6, 120)


def test_rss_growth_ignores_single_spikes_and_reports_the_trend():
    flat = [(t / 2, 500 + (40 if t % 7 == 0 else 0)) for t in range(120)]  # 60 s flat with spikes of +8%
    start, end, slope = bench_serve.rss_growth(flat, edge_s=10)
    assert start == end == 500 and abs(slope) < 0.2
    leak = [(t / 2, 500 + t) for t in range(120)]  # +1 per half second: 2 per second
    start, end, slope = bench_serve.rss_growth(leak, edge_s=10)
    assert start == 510 and end == 609 and abs(slope - 2.0) < 1e-9


def test_prefix_case_summary_and_report_schema(tmp_path):
    args = build_parser().parse_args(["bench", "serve", "--case", "prefix", "--out", str(tmp_path)])
    assert args.conversations == 100 and args.system_tokens == 2000 and args.name is None
    runs = {
        "without": [{"ttft_ms": 100.0 + i, "prompt_tokens": 2040, "cached_tokens": 0} for i in range(5)],
        "with": [{"ttft_ms": 100.0 if i == 0 else 5.0, "prompt_tokens": 2040, "cached_tokens": 2000 * (i > 0)}
                 for i in range(5)],
    }  # fmt: skip
    prefilled = {"without": 5 * 2040, "with": 2040 + 4 * 40}
    rows, summary = bench_serve.prefix_summary(runs, prefilled, {"hits": 4}, args)
    assert len(rows) == 5 and rows[1]["cached_tokens_with"] == 2000 and rows[1]["ttft_ms_without"] == 101.0
    assert summary["prefill_tokens_ratio"] == round(10200 / 2200, 2) and not summary["goal_prefill_tokens_20x"]
    assert summary["ttft_median_ratio"] == 102 / 5 and summary["goal_ttft_median_10x"]
    paths = write_report("serve_prefix", title="t", rows=rows, out_dir=tmp_path, summary=summary,
                         chart=bench_serve._prefix_chart(runs, prefilled, args))  # fmt: skip
    assert json.loads(paths["json"].read_text())["summary"]["prefix_cache"] == {"hits": 4} and paths["png"].exists()


def test_system_prompt_has_the_asked_number_of_tokens(tmp_path):
    from retnet.serving.random_model import write_random_model
    from tests.serving.helpers import tiny_config

    model_dir = write_random_model(tmp_path / "m", tiny_config())
    text = bench_serve.system_prompt(model_dir, 300)
    assert len(("<|system|>\n" + text + "<|end|>").encode()) == 300  # the byte tokenizer: one token per byte


def test_document_case_arguments_kv_baseline_and_peak_reset(tmp_path):
    import os

    from retnet.models import RetNetConfig
    from retnet_benchmarks import serve_document
    from retnet_benchmarks.measure import reset_peak_rss

    args = build_parser().parse_args(["bench", "serve", "--case", "document", "--lengths", "8192,1024"])
    assert args.lengths == [8192, 1024] and args.doc_repeats == 3 and args.prefill_chunk == 256
    tiny = RetNetConfig.preset("tiny", vocab_size=257)  # d 192, 4 layers: 3 heads of 64 in the matched Llama
    assert serve_document.llama_kv_bytes(tiny, 131072) == 2 * 4 * 192 * 131072 * 4
    assert reset_peak_rss(os.getpid())  # Linux lets a process reset its own peak RSS
    rows = [
        {"tokens": n, "prefill_tokens_per_s": 100.0, "llama_kv_cache_mib": n / 100, "peak_rss_growth_mib": 1.0}
        for n in (1024, 2048)
    ]
    assert serve_document.document_chart(rows) is not None
