"""Converting torchscale 0.3.0 RetNetDecoder checkpoints: stored fixture (always), live comparison (if installed)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retnet.cli.main import main as cli_main
from retnet.models import ConfigError, RetNetConfig, RetNetForCausalLM
from retnet.models.convert_torchscale import ConversionError, convert_torchscale, find_state_dict, infer_config
from retnet.ops import decay_weight_sum, official_log_decay, paper_log_decay
from tests.models.helpers import rel_err, tiny_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODES = ("parallel", "chunkwise", "recurrent")


def fixture_state_dict() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "torchscale_tiny.safetensors"))


def fixture_options() -> dict:
    return json.loads((FIXTURES / "torchscale_tiny.json").read_text())["convert_options"]


def all_mode_logits(model: RetNetForCausalLM, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our logits from each form; recurrent is fed one token at a time through the state."""
    out = {m: model(ids, mode=m).logits for m in ("parallel", "chunkwise")}
    state, steps = None, []
    for t in range(ids.shape[1]):
        o = model(ids[:, t : t + 1], state=state, use_cache=True, mode="recurrent")
        state = o.state
        steps.append(o.logits)
    out["recurrent"] = torch.cat(steps, 1)
    return out


# ------------------------------------------------------------------------------------------ stored fixture
def test_stored_fixture_is_small():
    assert sum(p.stat().st_size for p in FIXTURES.glob("torchscale_tiny*")) < 200_000


@torch.no_grad()
def test_stored_fixture_logits_match_after_cli_conversion(tmp_path, capsys):
    opts = fixture_options()
    argv = ["convert", "--from", "torchscale", str(FIXTURES / "torchscale_tiny.safetensors"), str(tmp_path / "m")]
    argv += ["--activation", opts["activation"], "--embed-scale", opts["embed_scale"], "--norm-eps", "1e-6"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 layers, hidden 16, 4 heads, value dim 32, ffn dim 32, vocab 64, official decay" in printed
    assert "layernorm_embedding" not in printed
    model = RetNetForCausalLM.from_pretrained(tmp_path / "m")
    cfg = model.config
    assert not cfg.layernorm_embedding and cfg.normalize_decay and not cfg.tie_word_embeddings
    assert cfg.embed_scale == pytest.approx(4.0)
    ref = load_file(str(FIXTURES / "torchscale_tiny_logits.safetensors"))
    ours = all_mode_logits(model, ref["input_ids"])
    for mode, logits in ours.items():
        for kind in ("logits_parallel", "logits_recurrent"):
            assert rel_err(logits, ref[kind]) < 1e-4, (mode, kind, rel_err(logits, ref[kind]))
    # Each option the state dict cannot record changes the outputs: a wrong flag is not silently harmless.
    for wrong in ({"activation": "gelu"}, {"embed_scale": 1.0}, {"normalize_decay": False}):
        other, _ = convert_torchscale(fixture_state_dict(), **{**opts, **wrong})
        assert rel_err(other(ref["input_ids"]).logits, ref["logits_parallel"]) > 1e-3, wrong


def test_nested_prefixed_pt_checkpoint(tmp_path):
    """A fairseq-style ``{"model": {"decoder.<name>": ...}}`` file loads through torch.load(weights_only=True)."""
    sd = fixture_state_dict()
    nested = {"model": {f"decoder.{k}": v for k, v in sd.items()} | {"decoder.version": torch.tensor([3.0])}}
    nested["extra_state"] = {"epoch": 3}
    torch.save(nested, tmp_path / "ckpt.pt")
    out = tmp_path / "m"
    argv = ["convert", "--from", "torchscale", str(tmp_path / "ckpt.pt"), str(out), "--embed-scale", "sqrt"]
    assert cli_main(argv) == 0
    direct, _ = convert_torchscale(sd, **fixture_options())
    loaded = RetNetForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 64, (1, 7))
    assert torch.equal(loaded(ids).logits, direct(ids).logits)
    # An existing model directory is not overwritten without --force.
    assert cli_main(argv) == 2
    assert cli_main([*argv, "--force"]) == 0


def test_cli_dtype_and_recorded_fields(tmp_path):
    argv = ["convert", "--from", "torchscale", str(FIXTURES / "torchscale_tiny.safetensors"), str(tmp_path / "m")]
    argv += ["--embed-scale", "sqrt", "--dtype", "bfloat16", "--chunk-size", "4", "--eos-token-id", "2"]
    assert cli_main(argv) == 0
    tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["chunk_size"], config["eos_token_id"], config["normalize_decay"]) == (4, 2, True)
    ref = load_file(str(FIXTURES / "torchscale_tiny_logits.safetensors"))
    model = RetNetForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert rel_err(model(ref["input_ids"]).logits, ref["logits_parallel"]) < 5e-2  # bf16-rounded weights


# ------------------------------------------------------------------------------------------ errors
def _convert_error(sd, **kw) -> str:
    with pytest.raises(ConversionError) as info:
        convert_torchscale(sd, **kw)
    return str(info.value)


def test_errors_name_the_tensor_or_key():
    sd = fixture_state_dict()
    assert "missing tensor 'layers.1.ffn.gate.weight'" in _convert_error(
        {k: v for k, v in sd.items() if k != "layers.1.ffn.gate.weight"}
    )
    bad = dict(sd, **{"layers.0.retention.g_proj.weight": torch.zeros(32, 17)})
    msg = _convert_error(bad)
    assert "tensor 'layers.0.retention.g_proj.weight' has shape (32, 17), expected (32, 16)" in msg
    msg = _convert_error(
        {k: v for k, v in sd.items() if not k.startswith("layers.1.")} | {"layers.2.ffn.fc1.weight": torch.zeros(1)}
    )
    assert "layer(s) [1] missing" in msg
    assert "missing tensor 'layer_norm.weight'" in _convert_error(
        {k: v for k, v in sd.items() if k != "layer_norm.weight"}
    )
    assert "unexpected tensor(s) layers.0.extra.weight" in _convert_error(
        dict(sd, **{"layers.0.extra.weight": torch.zeros(1)})
    )
    assert "unsupported tensor(s) layers.0.retention_layer_norm.bias" in _convert_error(
        dict(sd, **{"layers.0.retention_layer_norm.bias": torch.zeros(16)})
    )
    assert "follows neither the official schedule" in _convert_error(
        dict(sd, **{"retnet_rel_pos.decay": torch.full((4,), -0.1)})
    )
    assert "gives the head count; pass num_heads" in _convert_error(
        {k: v for k, v in sd.items() if k != "retnet_rel_pos.decay"}
    )
    assert "does not follow RetNet's rotation" in _convert_error(
        dict(sd, **{"retnet_rel_pos.angle": torch.tensor([1.0, 0.5, 0.01, 1e-4])})
    )
    msg = _convert_error({"weights": {"foo": torch.zeros(1)}})
    assert "looked for a tensor named 'embed_tokens.weight'" in msg and "key 'model', key 'state_dict'" in msg


def test_missing_decay_buffer_with_num_heads():
    sd = {k: v for k, v in fixture_state_dict().items() if k != "retnet_rel_pos.decay"}
    model, report = convert_torchscale(sd, num_heads=4, **fixture_options())
    assert model.config.num_heads == 4 and "assumed the official decay" in report.notes[0]
    assert "num_heads=2 but tensor" in _convert_error(fixture_state_dict(), num_heads=2)


def test_cli_errors_are_one_line(tmp_path, capsys):
    torch.save({"cfg": argparse.Namespace(arch="retnet")}, tmp_path / "fairseq.pt")
    assert cli_main(["convert", "--from", "torchscale", str(tmp_path / "fairseq.pt"), str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "torch.save(ckpt['model']" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["convert", "--from", "torchscale", str(tmp_path / "nope.pt"), str(tmp_path / "m")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    assert cli_main(["convert", "--from", "torchscale", str(tmp_path / "bad.safetensors"), str(tmp_path / "m")]) == 2
    assert "cannot read safetensors file" in capsys.readouterr().err


def test_schedule_and_tie_inference():
    sd = fixture_state_dict()
    sd["retnet_rel_pos.decay"] = paper_log_decay(4)
    assert infer_config(sd, embed_scale="sqrt").decay == "paper"
    # A half-precision buffer (the model was cast before saving) still identifies the schedule.
    sd["retnet_rel_pos.decay"] = official_log_decay(4).bfloat16()
    assert infer_config(sd).decay == "official"
    sd["output_projection.weight"] = sd["embed_tokens.weight"].clone()
    assert infer_config(sd).tie_word_embeddings
    del sd["output_projection.weight"]
    model, report = convert_torchscale(sd)
    assert report.tied and model.lm_head.weight is model.model.embed_tokens.weight


def test_find_state_dict_reports_nesting():
    sd = fixture_state_dict()
    tensors, report = find_state_dict({"state_dict": {f"module.decoder.{k}": v for k, v in sd.items()}})
    assert report.nested_key == "state_dict" and report.prefix == "module.decoder." and set(tensors) == set(sd)


# ------------------------------------------------------------------------------------------ the new config options
def test_decay_weight_sum_matches_direct_sum():
    log_decay = torch.cat([official_log_decay(6, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    counts = torch.tensor([[1, 2, 7], [40, 300, 1]])
    got = decay_weight_sum(log_decay, counts)
    for idx in torch.cartesian_prod(torch.arange(2), torch.arange(3)):
        n = int(counts[idx[0], idx[1]])
        direct = torch.exp(log_decay[None] * torch.arange(n, dtype=torch.float64)[:, None]).sum(0)
        torch.testing.assert_close(got[idx[0], idx[1]], direct, rtol=1e-12, atol=0)


def test_normalize_decay_keeps_forms_equal_and_is_cancelled_without_eps():
    ids = torch.randint(0, 97, (2, 19))
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, :5] = 0
    for eps in (1e-6, 0.0):
        model = tiny_model(normalize_decay=True, norm_eps=eps)
        outs = all_mode_logits(model, ids)
        for mode in ("chunkwise", "recurrent"):
            assert rel_err(outs[mode], outs["parallel"]) < 1e-12
        if eps > 0:  # (with eps = 0 the head norm of a padded step is 0/0, with or without this option)
            padded = {m: model(ids, attention_mask=mask, mode=m).logits[1, 5:] for m in MODES}
            unpadded = model(ids[1:, 5:]).logits[0]
            for m in MODES:
                assert rel_err(padded[m], unpadded) < 1e-12
        plain = tiny_model(normalize_decay=False, norm_eps=eps)
        diff = rel_err(plain(ids).logits, outs["parallel"])
        # The factor is positive per head and row: the scale-invariant head norm cancels it up to its eps.
        assert (diff < 1e-12) if eps == 0 else (diff > 1e-6)


def test_new_config_fields_validate_and_count():
    with pytest.raises(ConfigError, match="normalize_decay applies to fixed-decay retention only"):
        RetNetConfig(normalize_decay=True, gated=True)
    with pytest.raises(ConfigError, match="layernorm_embedding must be true or false"):
        RetNetConfig(layernorm_embedding="yes")
    with pytest.raises(ConfigError, match="embed_scale must be a positive number"):
        RetNetConfig(embed_scale=0)
    cfg = RetNetConfig.preset("tiny", layernorm_embedding=True)
    with torch.device("meta"):
        assert RetNetForCausalLM(cfg).num_parameters() == cfg.num_parameters()
    assert cfg.num_parameters() == RetNetConfig.preset("tiny").num_parameters() + cfg.hidden_size
    assert not RetNetConfig().layernorm_embedding and not RetNetConfig().normalize_decay


# ------------------------------------------------------------------------------------------ live torchscale
TS_CASES = {
    "defaults": dict(decoder_retention_heads=2),
    "four_heads_eps0": dict(decoder_retention_heads=4, layernorm_eps=0.0),
    "gelu_sqrt": dict(decoder_retention_heads=4, activation_fn="gelu", no_scale_embedding=False),
    "lnembed_sqrt": dict(decoder_retention_heads=2, layernorm_embedding=True, no_scale_embedding=False),
    "relu_tied": dict(decoder_retention_heads=2, activation_fn="relu", share_decoder_input_output_embed=True),
    # 24 heads of key dim 2: torchscale's float32 decay rounds gamma to 1 for heads h >= 20.
    "many_heads": dict(decoder_retention_heads=24, decoder_embed_dim=48, decoder_value_embed_dim=48),
}


@pytest.mark.parametrize("case", sorted(TS_CASES))
@torch.no_grad()
def test_matches_live_torchscale(case):
    pytest.importorskip("fairscale")
    pytest.importorskip("torchscale")
    from tests.fixtures.make_torchscale_fixture import randomize_norms
    from tests.models.torchscale_ref import build_torchscale_decoder, torchscale_recurrent_logits

    kw = dict(
        decoder_embed_dim=32,
        decoder_value_embed_dim=48,
        decoder_ffn_embed_dim=64,
        decoder_layers=2,
        activation_fn="swish",
    )
    kw.update(TS_CASES[case])
    torch.manual_seed(0)
    ts = build_torchscale_decoder(101, **kw)
    randomize_norms(ts, torch.Generator().manual_seed(0))
    ids = torch.randint(0, 101, (2, 21))
    ref = {"parallel": ts(ids)[0], "recurrent": torchscale_recurrent_logits(ts, ids)}
    eps = kw.get("layernorm_eps", 1e-6)
    scale = 1.0 if kw.get("no_scale_embedding", True) else "sqrt"
    model, report = convert_torchscale(ts.state_dict(), activation=kw["activation_fn"], embed_scale=scale, norm_eps=eps)
    assert report.tied == kw.get("share_decoder_input_output_embed", False)
    assert model.config.embed_scale == (1.0 if scale == 1.0 else math.sqrt(kw["decoder_embed_dim"]))
    tol = 1e-5 if eps == 0 else 1e-4
    for mode, logits in all_mode_logits(model, ids).items():
        for ts_mode, expected in ref.items():
            assert rel_err(logits, expected) < tol, (mode, ts_mode, rel_err(logits, expected))


@torch.no_grad()
def test_live_torchscale_fixture_script_round_trip(tmp_path, monkeypatch):
    """The stored fixture is what the script produces (same torchscale code, same seeds)."""
    pytest.importorskip("fairscale")
    pytest.importorskip("torchscale")
    from tests.fixtures import make_torchscale_fixture as maker

    monkeypatch.setattr(maker, "HERE", tmp_path)
    maker.main()
    for name in ("torchscale_tiny.safetensors", "torchscale_tiny_logits.safetensors"):
        fresh, stored = load_file(str(tmp_path / name)), load_file(str(FIXTURES / name))
        assert set(fresh) == set(stored)
        for k in stored:
            torch.testing.assert_close(fresh[k], stored[k], rtol=1e-5, atol=1e-6)
