"""Converting flash-linear-attention RetNets: stored checkpoints and logits recorded with fla's own code
(tests/fixtures/make_fla_fixture.py), recurrent continuation, refusals, and the reverse direction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from retnet.layers.rotary import apply_rotary, retnet_angles
from retnet.models import ConfigError, RetNetConfig, RetNetForCausalLM
from retnet.models.convert_common import ConversionError, read_hf_checkpoint
from retnet.models.convert_fla import convert_fla, convert_fla_directory, half_to_pairs, to_fla
from tests.models.helpers import rel_err, tiny_model
from tests.models.test_convert_torchscale import all_mode_logits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = ("base", "gqa", "mqa_plain")
PREFILL = 8


def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "fla_tiny_logits.safetensors"))


def fixture(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return read_hf_checkpoint(FIXTURES / "fla_tiny" / case)


def test_stored_fixtures_are_small():
    total = sum(p.stat().st_size for p in (FIXTURES / "fla_tiny").rglob("*") if p.is_file())
    assert total + (FIXTURES / "fla_tiny_logits.safetensors").stat().st_size < 300_000


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_logits_match_fla_in_every_form(case):
    model, report, _ = convert_fla_directory(FIXTURES / "fla_tiny" / case, chunk_size=4)
    ref = reference()
    ids = ref[f"{case}.input_ids"]
    for mode, logits in all_mode_logits(model, ids).items():
        for kind in ("logits", "decode_logits"):  # fla's parallel forward and its own cached decoding
            assert rel_err(logits, ref[f"{case}.{kind}"]) < 1e-4, (mode, kind, rel_err(logits, ref[f"{case}.{kind}"]))
    if f"{case}.long_input_ids" in ref:  # 70 tokens: several chunks
        long_ids = ref[f"{case}.long_input_ids"]
        for mode in ("parallel", "chunkwise"):
            assert rel_err(model(long_ids, mode=mode).logits, ref[f"{case}.long_logits"]) < 1e-4, mode
    if case == "gqa":
        assert model.config.key_dim == 8 and model.config.tie_word_embeddings
        assert any("num_kv_heads=2" in n for n in report.notes)
        assert any("use_short_conv" in n for n in report.notes)
    assert model.config.rotary_frequencies == "rope"


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_prefill_then_recurrent_decoding_continues_exactly_float64(case):
    cfg, sd = fixture(case)
    model, _ = convert_fla(cfg, sd, dtype=torch.float64, chunk_size=4)
    ids = reference()[f"{case}.input_ids"]
    full = model(ids, mode="parallel").logits
    out = model(ids[:, :PREFILL], use_cache=True, mode="chunkwise")
    steps, state = [out.logits], out.state
    for t in range(PREFILL, ids.shape[1]):
        out = model(ids[:, t : t + 1], state=state, use_cache=True, mode="recurrent")
        steps.append(out.logits)
        state = out.state
    assert rel_err(torch.cat(steps, 1), full) < 1e-12
    assert rel_err(full, reference()[f"{case}.logits"]) < 1e-4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"attn": {"layers": [1], "num_heads": 2}}, "attn"),
        ({"feature_map": "relu"}, "feature_map"),
        ({"use_output_gate": False}, "use_output_gate"),
        ({"hidden_act": "powlu"}, "hidden_act"),
        ({"attnres_block_size": 2}, "attnres_block_size"),
        ({"num_hidden_layers": 3}, "num_hidden_layers"),
        ({"vocab_size": 33}, "vocab_size"),
        ({"expand_v": 1.0}, "expand_v=1.0 gives width 16"),
        ({"expand_k": 0.5}, "expand_k=0.5 gives width 8"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"intermediate_size": 64}, "intermediate_size"),
        ({"model_type": "gla"}, "model_type"),
        ({"decoder_embed_dim": 16}, "--from syncdoth"),
    ],
)
def test_unsupported_or_inconsistent_config_is_refused_naming_the_field(change, field):
    cfg, sd = fixture("base")
    with pytest.raises(ConversionError, match=field):
        convert_fla({**cfg, **change}, sd)


def test_unknown_tensors_and_short_convolutions_are_refused():
    cfg, sd = fixture("base")
    conv = dict(sd, **{"model.layers.0.attn.q_conv1d.weight": torch.zeros(16, 1, 4)})
    with pytest.raises(ConversionError, match="q_conv1d.*use_short_conv"):
        convert_fla(cfg, conv)
    with pytest.raises(ConversionError, match="unexpected tensor.*model.extra"):
        convert_fla(cfg, dict(sd, **{"model.extra": torch.zeros(1)}))
    del sd["model.layers.1.attn.g_norm_swish_gate.weight"]
    with pytest.raises(ConversionError, match="g_norm_swish_gate.*elementwise_affine"):
        convert_fla(cfg, sd)


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_to_fla_and_back_is_lossless_and_keeps_the_logits(case):
    cfg, sd = fixture(case)
    model, _ = convert_fla(cfg, sd)
    fla_cfg, fla_sd = to_fla(model)
    assert fla_cfg["num_kv_heads"] is None and fla_cfg["expand_k"] * 16 == (model.config.key_dim or 16)
    back, _ = convert_fla(fla_cfg, fla_sd)
    ours, again = model.state_dict(), back.state_dict()
    assert ours.keys() == again.keys()
    for name in ours:
        assert torch.equal(ours[name], again[name]), name
    ids = reference()[f"{case}.input_ids"]
    assert rel_err(back(ids).logits, reference()[f"{case}.logits"]) < 1e-4
    if case == "base":  # everything but the folded output norm is fla's tensors unchanged
        for name, tensor in sd.items():
            if "g_norm" not in name and "o_proj" not in name:
                assert torch.equal(fla_sd[name], tensor), name


@torch.no_grad()
def test_native_rope_model_round_trips_through_fla_exactly():
    model = tiny_model(rotary_frequencies="rope", key_dim=16, tie_word_embeddings=True)
    back, _ = convert_fla(*to_fla(model), dtype=torch.float64)
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    ids = torch.randint(0, 97, (2, 9))
    assert rel_err(back(ids).logits, model(ids).logits) < 1e-14


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({}, "rotary_frequencies"),
        ({"rotary_frequencies": "rope", "decay": "paper"}, "decay"),
        ({"rotary_frequencies": "rope", "gated": True}, "block_types / gated"),
        ({"rotary_frequencies": "rope", "embed_scale": 2.0}, "embed_scale"),
        ({"rotary_frequencies": "rope", "rotary_base": 500.0}, "rotary_base"),
        ({"rotary_frequencies": "rope", "activation": "gelu"}, "activation"),
    ],
)
def test_to_fla_refuses_what_fla_cannot_express(overrides, field):
    with pytest.raises(ConversionError, match=f"cannot write fla's format: {field}="):
        to_fla(tiny_model(**overrides))


@settings(max_examples=25, deadline=None)
@given(half=st.integers(1, 8), position=st.integers(0, 5000), seed=st.integers(0, 2**16))
def test_rotate_half_equals_adjacent_pairs_after_the_permutation(half, position, seed):
    """fla's rotation of the halves, then our reordering == our reordering, then our pairwise rotation."""
    D = 2 * half
    x = torch.randn(1, 1, 1, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theta = 1.0 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    cos, sin = torch.cos(position * theta).repeat(2), torch.sin(position * theta).repeat(2)
    x1, x2 = x[..., :half], x[..., half:]
    fla = x * cos + torch.cat((-x2, x1), -1) * sin
    angle = retnet_angles(D, frequencies="rope") * position
    ours = apply_rotary(x[..., half_to_pairs(D)], torch.sin(angle)[None, None], torch.cos(angle)[None, None])
    torch.testing.assert_close(ours, fla[..., half_to_pairs(D)], rtol=0, atol=1e-12)


def test_config_options_validate_and_count():
    cfg = RetNetConfig(hidden_size=24, num_heads=4, value_dim=32, ffn_dim=32, key_dim=8, rotary_frequencies="rope")
    assert cfg.key_head_dim == 2
    model = RetNetForCausalLM(cfg)
    assert model.num_parameters() == cfg.num_parameters()
    assert model.model.layers[0].retention.q_proj.weight.shape == (8, 24)
    for bad, match in (
        ({"key_dim": 6}, "key_dim 6 is not divisible by 4 heads"),
        ({"key_dim": 12}, "key head dim key_dim/num_heads = 3 must be even"),
        ({"key_dim": 0}, "key_dim must be a positive int"),
        ({"key_dim": 8, "block_types": "RA"}, "key_dim applies to retention layers only"),
        ({"rotary_frequencies": "linear"}, "rotary_frequencies must be one of"),
    ):
        with pytest.raises(ConfigError, match=match):
            RetNetConfig(**{"hidden_size": 24, "num_heads": 4, "num_layers": 2, **bad})
    assert RetNetConfig().rotary_frequencies == "retnet" and RetNetConfig().key_dim is None
