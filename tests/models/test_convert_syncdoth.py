"""Converting syncdoth/RetNet checkpoints: stored checkpoints and logits recorded with syncdoth's own code
(tests/fixtures/make_syncdoth_fixture.py), recurrent continuation and refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retnet.models.convert_common import ConversionError, read_hf_checkpoint
from retnet.models.convert_syncdoth import convert_syncdoth, convert_syncdoth_directory
from tests.models.helpers import rel_err
from tests.models.test_convert_torchscale import all_mode_logits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = ("defaults", "swish_lm_decay", "lnembed")


def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "syncdoth_tiny_logits.safetensors"))


def fixture(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return read_hf_checkpoint(FIXTURES / "syncdoth_tiny" / case)


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_logits_match_syncdoth_in_every_form(case):
    model, report, _ = convert_syncdoth_directory(FIXTURES / "syncdoth_tiny" / case, chunk_size=4)
    ref = reference()
    for mode, logits in all_mode_logits(model, ref[f"{case}.input_ids"]).items():
        for kind in ("logits", "recurrent_logits"):
            assert rel_err(logits, ref[f"{case}.{kind}"]) < 1e-4, (mode, kind, rel_err(logits, ref[f"{case}.{kind}"]))
    c = model.config
    expected = {
        "defaults": ("gelu", 1.0, "official", False, False),
        "swish_lm_decay": ("swish", math.sqrt(16), "paper", True, False),
        "lnembed": ("relu", 1.0, "official", False, True),
    }[case]
    assert (c.activation, c.embed_scale, c.decay, c.tie_word_embeddings, c.layernorm_embedding) == expected
    assert c.normalize_decay and report.prefix == "model."


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_prefill_then_recurrent_decoding_continues_exactly_float64(case):
    cfg, sd = fixture(case)
    model, _ = convert_syncdoth(cfg, sd, dtype=torch.float64, chunk_size=4)
    ids = reference()[f"{case}.input_ids"]
    full = model(ids, mode="parallel").logits
    out = model(ids[:, :7], use_cache=True, mode="chunkwise")
    steps, state = [out.logits], out.state
    for t in range(7, ids.shape[1]):
        out = model(ids[:, t : t + 1], state=state, use_cache=True, mode="recurrent")
        steps.append(out.logits)
        state = out.state
    assert rel_err(torch.cat(steps, 1), full) < 1e-12
    assert rel_err(full, reference()[f"{case}.logits"]) < 1e-4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"deepnorm": True, "subln": False}, "deepnorm"),
        ({"decoder_normalize_before": False, "subln": False}, "decoder_normalize_before"),
        ({"use_glu": False}, "use_glu"),
        ({"activation_fn": "tanh"}, "activation_fn"),
        ({"layernorm_eps": -1}, "layernorm_eps"),
        ({"decoder_layers": 3}, "decoder_layers"),
        ({"decoder_ffn_embed_dim": 64}, "decoder_ffn_embed_dim"),
        ({"use_lm_decay": True}, "use_lm_decay"),
        ({"layernorm_embedding": True}, "layernorm_embedding"),
        ({"decoder_embed_dim": None, "num_hidden_layers": 2}, "use --from fla"),
    ],
)
def test_unsupported_or_inconsistent_config_is_refused_naming_the_field(change, field):
    cfg, sd = fixture("defaults")
    cfg = {k: v for k, v in {**cfg, **change}.items() if v is not None}
    with pytest.raises(ConversionError, match=field):
        convert_syncdoth(cfg, sd)


def test_subln_forces_pre_norm_as_syncdoth_does():
    cfg, sd = fixture("defaults")
    model, _ = convert_syncdoth({**cfg, "decoder_normalize_before": False, "subln": True}, sd)
    assert model.config.num_layers == 2


def test_tensor_errors_name_the_tensor():
    cfg, sd = fixture("defaults")
    with pytest.raises(ConversionError, match="unexpected tensor 'other.weight'"):
        convert_syncdoth(cfg, dict(sd, **{"other.weight": torch.zeros(1)}))
    with pytest.raises(ConversionError, match="unexpected tensor.*decay_proj"):
        convert_syncdoth(cfg, dict(sd, **{"model.layers.0.retention.decay_proj.weight": torch.zeros(4, 4)}))
    untied = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    with pytest.raises(ConversionError, match="missing tensor 'lm_head.weight'.*tie_word_embeddings"):
        convert_syncdoth(cfg, untied)
