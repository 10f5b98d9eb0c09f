"""Prefix states: requests sharing a system prompt prefill only their new tokens, with the very tokens a run
without the cache gives (greedy, float64); the cache is exact, bounded by bytes and counted; /metrics parses."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from retnet.data.tokenizers import Tokenizer
from retnet.models import RetNetState, load_pretrained
from retnet.serving.app import create_app
from retnet.serving.chat_template import ChatTemplate
from retnet.serving.config import ServerConfig
from retnet.serving.prefix_cache import PrefixCache, prefix_key, text_boundaries
from tests.serving.helpers import make_model_dir

SYSTEM = "You are a helpful assistant who answers in one short sentence. " * 8
USERS = ["apples?", "bears!", "cats and dogs", "dune", "eels"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m") / "m")


def run(model_dir, data_dir, **cfg) -> tuple[list[dict], dict, str]:
    """Every user message as a new conversation after the shared system prompt: replies, /health, /metrics."""
    config = ServerConfig(model_dir, model_name="m", data_dir=data_dir, threads=1, dtype="float64", **cfg)
    with TestClient(create_app(config)) as client:
        bodies = []
        for user in USERS:
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
            r = client.post(
                "/v1/chat/completions", json={"model": "m", "messages": msgs, "max_tokens": 8, "temperature": 0}
            )
            assert r.status_code == 200, r.text
            bodies.append(r.json())
        return bodies, client.get("/health").json(), client.get("/metrics").text


def test_shared_system_prompt_is_prefilled_once_with_identical_tokens(model_dir, tmp_path):
    plain, plain_health, _ = run(model_dir, tmp_path / "a", prefix_cache_bytes=0)
    cached, health, metrics = run(model_dir, tmp_path / "b", prefix_every=64)
    texts = [b["choices"][0]["message"]["content"] for b in cached]
    assert texts == [b["choices"][0]["message"]["content"] for b in plain]
    assert [b["usage"]["prompt_tokens"] for b in cached] == [b["usage"]["prompt_tokens"] for b in plain]

    tpl = ChatTemplate()
    system_len = len(tpl.render([("system", SYSTEM)], add_generation_prompt=False).encode())  # byte tokenizer
    assert system_len > 500
    assert [b["usage"]["prompt_tokens_details"]["cached_tokens"] for b in cached] == [0] + [system_len] * 4
    full = sum(b["usage"]["prompt_tokens"] for b in plain)
    assert plain_health["engine"]["tokens_prefilled"] == full
    assert health["engine"]["tokens_prefilled"] == full - 4 * system_len  # only the new tokens
    p = health["prefix_cache"]
    assert (p["hits"], p["misses"], p["tokens_saved"]) == (4, 1, 4 * system_len) and p["bytes"] > 0

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    value = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert value["retnet_prefill_tokens_saved_total"] == 4 * system_len
    assert value["retnet_prefill_tokens_total"] == full - 4 * system_len
    assert value["retnet_generated_tokens_total"] == sum(b["usage"]["completion_tokens"] for b in cached)
    assert value["retnet_prefix_cache_hits_total"] == 4 and value["retnet_queue_length"] == 0
    assert value["retnet_store_bytes"] == health["store"]["bytes"] and value["retnet_prefix_cache_bytes"] == p["bytes"]
    ttft = {s.name: s.value for s in families["retnet_time_to_first_token_seconds"].samples}
    assert ttft["retnet_time_to_first_token_seconds_count"] == len(USERS)
    ok = [s for s in families["retnet_requests"].samples if s.name == "retnet_requests_total"]
    assert [(s.labels, s.value) for s in ok] == [({"endpoint": "chat", "outcome": "ok"}, len(USERS))]
    assert "retnet_request_latency_seconds" in families


def test_prefix_state_equals_a_direct_prefill(model_dir, tmp_path):
    """The cached state at a boundary is the state of prefilling exactly that prefix (float64, tight)."""
    config = ServerConfig(
        model_dir, model_name="m", data_dir=tmp_path / "d", threads=1, dtype="float64", prefix_every=100
    )
    with TestClient(create_app(config)) as client:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
        client.post("/v1/chat/completions", json={"model": "m", "messages": msgs, "max_tokens": 2})
        cache = client.app.state.prefix_cache
    tok = Tokenizer.load(model_dir, 256)
    ids = tok.encode(ChatTemplate().render([("system", SYSTEM)], add_generation_prompt=False))
    model = load_pretrained(model_dir, dtype=torch.float64)
    with torch.no_grad():
        want = model(torch.tensor([ids]), use_cache=True, mode="parallel")
    for n in (100, 200, len(ids)):
        state, logits = cache.lru.get(prefix_key(ids[:n]))
        with torch.no_grad():
            ref = model(torch.tensor([ids[:n]]), use_cache=True, mode="parallel")
        for a, b in zip(state.layers, ref.state.layers):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(logits, ref.logits[0, -1], rtol=1e-10, atol=1e-10)
    assert want.state.offset.tolist() == [len(ids)]


def state(fill: float) -> RetNetState:
    return RetNetState([torch.full((1, 2, 4, 4), float(fill))], torch.tensor([3]))


def test_cache_is_exact_longest_first_and_bounded_by_bytes():
    logits = torch.zeros(1, 8)
    size = state(0).nbytes() + logits.numel() * 4
    cache = PrefixCache(max_bytes=3 * size, every=4)
    prompt = list(range(20))
    cache.put(prompt[:4], state(4), logits)
    cache.put(prompt[:8], state(8), logits)
    n, got = cache.lookup(prompt)
    assert n == 8 and float(got.layers[0][0, 0, 0, 0]) == 8
    got.layers[0].zero_()  # a copy: the cache is unchanged
    assert float(cache.lookup(prompt)[1].layers[0].sum()) == 8 * 32
    assert cache.lookup([0, 1, 2, 3, 99, 5, 6, 7, 8])[0] == 4  # differs at position 4: only the 4-prefix hits
    assert cache.lookup(prompt[:8])[0] == 4  # a hit leaves at least one token to prefill
    assert cache.lookup([1, 2, 3, 4, 5]) == (0, None)
    # boundaries, every 4 tokens up to 4 before the end (8 is cached), and the end
    assert cache.positions(prompt, [6, 19, 3], start=5) == [6, 12, 16, 19, 20]
    assert cache.positions(list(range(100, 115)), [], start=0) == [4, 8, 15]  # 12 is within 4 of the end
    cache.lookup(prompt)  # uses the 4-prefix, then the 8-prefix
    cache.put([7, 7], state(1), logits)
    cache.put([7, 7, 7], state(1), logits)  # over the budget: the least recently used (the 4-prefix) goes
    assert cache.lookup(prompt)[0] == 8 and cache.lookup([0, 1, 2, 3, 4])[0] == 0
    s = cache.stats()
    assert s["entries"] == 3 and s["bytes"] == 3 * size and s["evicted"] == 1


def test_text_boundaries_only_where_tokens_agree():
    enc = {"ab": [1], "abc": [1, 2], "abcd": [1, 9]}.__getitem__  # "abcd" merges across the boundary
    assert text_boundaries(enc, ["ab", "abc", "abcd"], [1, 2, 3]) == [1, 2]
