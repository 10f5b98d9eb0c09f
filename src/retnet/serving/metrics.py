"""``/metrics``: the server's counters in the Prometheus text format (``prometheus_client``).

Each app has its own registry (a process may hold several apps, e.g. in tests). Request counts and latency
histograms are recorded as requests end; engine, store and prefix-cache figures are read from their own
counters when scraped, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Live(Collector):
    """Engine, store and prefix-cache figures, read at scrape time."""

    def __init__(self, engine_load: Callable[[], dict], store_stats: Callable[[], dict], prefix_stats) -> None:
        self.engine_load, self.store_stats, self.prefix_stats = engine_load, store_stats, prefix_stats

    def collect(self):
        e = self.engine_load()
        yield CounterMetricFamily("retnet_engine_requests", "Requests admitted by the engine", value=e["requests"])
        yield CounterMetricFamily("retnet_generated_tokens", "Tokens sampled", value=e["tokens_generated"])
        yield CounterMetricFamily("retnet_prefill_tokens", "Prompt tokens prefilled", value=e["tokens_prefilled"])
        yield CounterMetricFamily("retnet_decode_steps", "Batched decode steps", value=e["steps"])
        yield CounterMetricFamily(
            "retnet_failed_requests", "Requests ended by an engine failure", value=e["failed_requests"]
        )
        yield GaugeMetricFamily(
            "retnet_queue_length", "Requests waiting or prefilling", value=e["waiting"] + e["prefilling"]
        )
        yield GaugeMetricFamily("retnet_decoding_sequences", "Sequences in the decode batch", value=e["decoding"])
        s = self.store_stats()
        yield GaugeMetricFamily("retnet_store_bytes", "Bytes of stored conversation states", value=s["bytes"])
        yield GaugeMetricFamily("retnet_store_conversations", "Stored conversations", value=s["conversations"])
        yield GaugeMetricFamily(
            "retnet_store_active_turns", "Turns in progress in this process", value=s["active_turns"]
        )
        evicted = CounterMetricFamily("retnet_store_evictions", "Conversations evicted", labels=["reason"])
        for reason, n in sorted(s["evicted"].items()):
            evicted.add_metric([reason], n)
        yield evicted
        p = self.prefix_stats()
        yield CounterMetricFamily(
            "retnet_prefill_tokens_saved",
            "Prompt tokens not prefilled thanks to prefix states",
            value=p["tokens_saved"],
        )
        yield CounterMetricFamily(
            "retnet_prefix_cache_hits", "Requests that started from a prefix state", value=p["hits"]
        )
        yield CounterMetricFamily("retnet_prefix_cache_misses", "Requests without a prefix state", value=p["misses"])
        yield GaugeMetricFamily("retnet_prefix_cache_bytes", "Bytes of prefix states held", value=p["bytes"])
        yield GaugeMetricFamily("retnet_prefix_cache_entries", "Prefix states held", value=p["entries"])


class Metrics:
    """One app's registry: request outcomes and latencies, plus the live figures."""

    def __init__(self, engine_load: Callable[[], dict], store_stats: Callable[[], dict], prefix_stats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "retnet_requests", "Generation requests by endpoint and outcome", ["endpoint", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "retnet_request_latency_seconds", "From the request's arrival in the engine to its last token",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "retnet_time_to_first_token_seconds", "From the request's arrival in the engine to its first token",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_Live(engine_load, store_stats, prefix_stats))

    def finished(self, endpoint: str, ttft_s: float, total_s: float) -> None:
        self.requests.labels(endpoint, "ok").inc()
        self.ttft.labels(endpoint).observe(ttft_s)
        self.latency.labels(endpoint).observe(total_s)

    def failed(self, endpoint: str, code: str | None) -> None:
        self.requests.labels(endpoint, code or "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
