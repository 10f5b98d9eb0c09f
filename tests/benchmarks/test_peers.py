"""The peer registry: every baseline is the real ``transformers`` model, matched in size, with a real decode state."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

from retnet.cli.main import main as cli_main
from retnet.models import RetNetConfig
from retnet_benchmarks.baseline import TRAIN_25M, count_parameters
from retnet_benchmarks.peers import (
    BASELINES,
    build_baseline,
    build_trainable,
    peer_config,
    peer_parameters,
    start,
    state_nbytes,
    step,
)

TINY = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=2, value_dim=48, ffn_dim=64)
CLASSES = {
    "llama": "LlamaForCausalLM",
    "mamba": "MambaForCausalLM",
    "mamba2": "Mamba2ForCausalLM",
    "rwkv": "RwkvForCausalLM",
}


@pytest.fixture(scope="module")
def tiny_peers():
    rc = RetNetConfig(**TINY)
    return rc, {name: build_baseline(name, rc) for name in BASELINES}


@pytest.mark.parametrize("name", BASELINES)
def test_tiny_peer_matches_parameters_width_and_depth(tiny_peers, name):
    rc, peers = tiny_peers
    model, info = peers[name]
    assert type(model).__name__ == CLASSES[name] == info["class"]
    assert info["params"] == count_parameters(model)
    assert abs(info["params"] - rc.num_parameters()) / rc.num_parameters() < 0.02
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (32, 2, 97)


@pytest.mark.parametrize("name", BASELINES)
def test_25m_peer_matches_parameters(name):
    rc = RetNetConfig(**TRAIN_25M)
    n = peer_parameters(name, rc)  # counted on the meta device: no memory, no initialisation
    assert abs(n - rc.num_parameters()) / rc.num_parameters() < 0.02, (name, n)
    cfg = peer_config(name, rc)
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (rc.hidden_size, rc.num_layers)


@pytest.mark.parametrize("name", BASELINES)
def test_cached_greedy_step_equals_full_forward(tiny_peers, name):
    """Prefill, then one greedy step from the cache: the same logits as a full forward over the whole sequence."""
    _, peers = tiny_peers
    model, _ = peers[name]
    rows = 2
    ids = torch.randint(0, 97, (rows, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, state = start(model, ids)
        token = logits[:, -1].argmax(-1, keepdim=True)
        before = state_nbytes(state)
        stepped, state = step(model, token, state)
        full, _ = start(model, torch.cat([ids, token], 1))
    torch.testing.assert_close(stepped[:, -1], full[:, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, full[:, :-1], rtol=1e-4, atol=1e-4)
    grew = state_nbytes(state) - before
    assert grew == (2 * 2 * 32 * 4 * rows if name == "llama" else 0)  # K and V, 2 layers, float32


def test_rwkv_steps_of_several_rows_then_a_block_equal_the_full_forward(tiny_peers):
    """RWKV's one-token steps at batch 3 (the rows under vmap), then a two-token block from that state: the
    logits of one forward over the whole sequence (float64 weights; RWKV keeps its attention state in float32)."""
    model = copy.deepcopy(tiny_peers[1]["rwkv"][0]).double()
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, state = start(model, ids[:, :5])
        got = []
        for t in (5, 6):
            logits, state = step(model, ids[:, t : t + 1], state)
            got.append(logits[:, -1])
        assert [s.shape for s in state] == [(3, 32, 2)] * 5
        logits, state = step(model, ids[:, 7:9], state)
        full, _ = start(model, ids)
    torch.testing.assert_close(torch.stack(got, 1), full[:, 5:7], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits, full[:, 7:9], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(full[0, 5], full[1, 5])  # the rows differ, so a mix-up of rows would show


def test_state_bytes_are_measured_from_the_real_caches(tiny_peers):
    rc, peers = tiny_peers
    infos = {name: info for name, (_, info) in peers.items()}
    assert infos["llama"]["state_bytes_fixed"] == 0
    assert infos["llama"]["state_bytes_per_token"] == 2 * rc.num_layers * rc.hidden_size * 4
    inner = infos["mamba"]["free_width"]["intermediate_size"]
    mamba_cfg = peers["mamba"][0].config
    expected = rc.num_layers * inner * (mamba_cfg.conv_kernel + mamba_cfg.state_size) * 4  # conv + SSM state
    assert (infos["mamba"]["state_bytes_fixed"], infos["mamba"]["state_bytes_per_token"]) == (expected, 0)
    assert infos["rwkv"]["state_bytes_fixed"] == 5 * rc.hidden_size * rc.num_layers * 4
    m2 = peers["mamba2"][0].config
    inner2 = m2.num_heads * m2.head_dim
    conv = inner2 + 2 * m2.n_groups * m2.state_size
    expected2 = rc.num_layers * (conv * m2.conv_kernel + m2.num_heads * m2.head_dim * m2.state_size) * 4
    assert infos["mamba2"]["state_bytes_fixed"] == expected2
    assert all("reference" in infos[n]["notes"] for n in ("mamba", "mamba2", "rwkv"))


def test_mamba2_short_sequences_take_shorter_chunks_with_the_same_loss_and_gradients():
    """The trainable Mamba-2 cuts its scan's chunk to a shorter sequence with the same loss and gradients (to
    float32 rounding: transformers' reference scan casts its inputs to float32 even in a float64 model)."""
    model = build_trainable("mamba2", RetNetConfig(**TINY)).double().train()
    ids = torch.randint(0, TINY["vocab_size"], (3, 10), generator=torch.Generator().manual_seed(0))

    def loss_and_grads(forward):
        model.zero_grad()
        loss = forward(ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    full = loss_and_grads(lambda x: model.model(input_ids=x, labels=x, use_cache=False))  # chunks of 64
    assert {m.chunk_size for m in model.mamba2_mixers} == {64}
    cut = loss_and_grads(lambda x: model(x, labels=x))
    assert {m.chunk_size for m in model.mamba2_mixers} == {10} and len(model.mamba2_mixers) == TINY["num_layers"]
    torch.testing.assert_close(cut[0], full[0], rtol=1e-6, atol=0)
    for a, b in zip(cut[1], full[1], strict=True):
        assert (a - b).norm() <= 1e-5 * b.norm()


def test_unknown_baseline_is_named():
    with pytest.raises(ValueError, match="baseline must be one of"):
        peer_config("gpt", RetNetConfig(**TINY))


@pytest.mark.slow
def test_state_memory_peers_report(tmp_path, monkeypatch):
    """``retnet bench state-memory --peers`` at toy size: one row per model (RetNet's variants and the peers),
    measured state, equal sizes."""
    models = ["retnet", "gated", "hybrid", "yoco", *BASELINES]
    argv = ["bench", "state-memory", "--preset", "tiny", "--peers", *models, "--peer-contexts", "16,64"]
    monkeypatch.setattr(sys, "argv", ["retnet", *argv])
    assert cli_main([*argv, "--out-dir", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {f"peers_state_memory.{ext}" for ext in ("json", "md", "png")}
    data = json.loads((tmp_path / "peers_state_memory.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert list(rows) == models
    tiny = RetNetConfig.preset("tiny")
    assert rows["retnet"]["state_bytes_fixed"] == tiny.num_layers * tiny.state_nbytes_per_layer() + 8  # + offsets
    for name, r in rows.items():
        assert abs(r["params"] - rows["retnet"]["params"]) / rows["retnet"]["params"] < 0.02, name
        grows = name in ("llama", "hybrid", "yoco")  # a KV cache: all layers', one attention layer's, one shared
        assert (r["MiB_at_64"] > r["MiB_at_16"]) is grows and (r["state_bytes_per_token"] > 0) is grows
    assert rows["llama"]["state_bytes_per_token"] == 2 * tiny.num_layers * tiny.hidden_size * 4
    assert rows["gated"]["state_bytes_fixed"] == rows["retnet"]["state_bytes_fixed"]
    assert rows["hybrid"]["state_bytes_per_token"] < rows["llama"]["state_bytes_per_token"]
    assert "reference paths" in (tmp_path / "peers_state_memory.md").read_text()


@pytest.mark.slow
def test_decode_with_peers(tmp_path, monkeypatch):
    """``retnet bench decode`` at toy size with every peer: real steps, fixed states, at batch 1 and 2."""
    argv = ["bench", "decode", "--tiny", "--in-process", "--contexts", "16,64", "--batch8-contexts", "16"]
    argv += ["--paths", "none", "--large-batch", "2", "--threads", "1", "--prefill-max", "16", "--warmup", "0"]
    argv += ["--steps", "1", "--models", "retnet", *BASELINES, "--out-dir", str(tmp_path), "--name", "pd"]
    monkeypatch.setattr(sys, "argv", ["retnet", *argv])
    assert cli_main(argv) == 0
    data = json.loads((tmp_path / "pd.json").read_text())
    rows = {(r["model"], r["batch"], r["context"]): r for r in data["rows"]}
    assert len(rows) == 15
    for name in ("mamba", "mamba2", "rwkv"):
        a, b = rows[(name, 1, 16)], rows[(name, 1, 64)]
        assert a["path"] == "hf-reference" and a["step_ms"] > 0
        assert (a["context_fill"], b["context_fill"]) == ("prefill", "synthetic")
        assert a["state_or_cache_mib"] == b["state_or_cache_mib"] > 0  # a fixed-size state
        assert abs(data["summary"][f"{name}_params"] - data["summary"]["retnet_params"]) < 0.02 * 123200
    for name in ("mamba", "mamba2", "rwkv"):  # batch 2: twice the state, timed
        assert rows[(name, 2, 16)]["state_or_cache_mib"] == 2 * rows[(name, 1, 16)]["state_or_cache_mib"]
        assert rows[(name, 2, 16)]["step_ms"] > 0
    assert rows[("llama", 1, 64)]["state_or_cache_mib"] == 4 * rows[("llama", 1, 16)]["state_or_cache_mib"]
    assert "reference paths" in (tmp_path / "pd.md").read_text()


@pytest.mark.slow
def test_train_with_peers(tmp_path, monkeypatch):
    """``retnet bench train`` at toy size with RetNet's variants and every peer: Llama's loss and timing, matched
    sizes, and a scan skipped (with the reason) where its memory estimate exceeds the budget."""
    from retnet_benchmarks.bench_train import scan_bytes

    tiny = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=2, value_dim=96, ffn_dim=96, chunk_size=16)
    budget = scan_bytes("mamba2", tiny, 1, 48)  # Mamba-2's chunk products fit at 32 tokens, not at 64
    assert scan_bytes("mamba", tiny, 1, 64) < budget and scan_bytes("rwkv", tiny, 1, 64) == 0
    argv = ["bench", "train", "--tiny", "--in-process", "--lengths", "32,64", "--steps", "1", "--warmup-len", "16"]
    argv += ["--threads", "1", "--models", "retnet", "gated", "hybrid", "yoco", *BASELINES]
    argv += ["--modes", "chunkwise,sdpa,hf-reference"]
    argv += ["--memory-budget-gib", repr(budget / 2**30), "--out-dir", str(tmp_path), "--name", "pt"]
    monkeypatch.setattr(sys, "argv", ["retnet", *argv])
    assert cli_main(argv) == 0
    data = json.loads((tmp_path / "pt.json").read_text())
    rows = {(r["model"], r["seq_len"]): r for r in data["rows"]}
    assert len(rows) == 16
    assert "Mamba-2's scan tensors" in rows[("mamba2", 64)]["error"]
    ran = [r for r in data["rows"] if "error" not in r]
    assert len(ran) == 15 and all(r["tokens_per_s"] > 0 and r["memory_mib"] > 0 for r in ran)
    s = data["summary"]
    for name in ("gated", "hybrid", "yoco"):  # chunkwise, at RetNet's size
        assert rows[(name, 64)]["mode"] == "chunkwise"
        assert abs(rows[(name, 64)]["params"] - rows[("retnet", 64)]["params"]) < 0.02 * rows[("retnet", 64)]["params"]
    assert "gated RetNet, hybrid, YOCO vs Llama" in data["title"]
    for name in ("mamba", "rwkv"):
        assert rows[(name, 64)]["mode"] == "hf-reference"
        assert abs(rows[(name, 64)]["params"] - rows[("retnet", 64)]["params"]) < 0.02 * rows[("retnet", 64)]["params"]
        assert s[f"chunkwise_over_{name}_tokens_per_s_64"] > 0 and s[f"chunkwise_over_{name}_memory_64"] > 0
    assert "chunkwise_over_mamba2_tokens_per_s_32" in s and "chunkwise_over_mamba2_tokens_per_s_64" not in s
    assert "reference paths" in (tmp_path / "pt.md").read_text() and "Mamba-2" in data["title"]
