import json
import math

import torch

from retnet.cli.model_dir import load_model_dir
from retnet.data.batching import encode_tensor
from retnet.models import RetNetConfig
from retnet.training.config import TrainConfig, build_model_config, preset_settings
from retnet.training.evaluate import evaluate

from .helpers import run_cli


def test_info_preset_prints_parameter_count_and_shape(capsys):
    code, out, _ = run_cli(capsys, "info", "shakespeare")
    assert code == 0
    cfg = build_model_config(TrainConfig(**preset_settings("shakespeare")), 2048)
    assert f"{cfg.num_parameters():,} parameters" in out
    assert f"hidden_size={cfg.hidden_size}" in out and f"num_layers={cfg.num_layers}" in out
    code, out, _ = run_cli(capsys, "info", "tiny")
    assert code == 0 and f"{RetNetConfig.preset('tiny').num_parameters():,} parameters" in out


def test_info_model_dir(capsys, trained_dir):
    code, out, _ = run_cli(capsys, "info", trained_dir)
    assert code == 0
    assert "bpe tokenizer, vocab 300" in out and "bits/byte" in out and "ckpt-00000004.pt" in out


def test_eval_json_matches_evaluate(capsys, trained_dir, corpus_file):
    code, out, _ = run_cli(
        capsys,
        "eval",
        trained_dir,
        "--data",
        corpus_file,
        "--max-batches",
        "2",
        "--json",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
    )
    assert code == 0
    figures = json.loads(out)
    model, tok = load_model_dir(trained_dir)
    tokens = encode_tensor(tok, corpus_file.read_text())
    ref = evaluate(model, tokens, torch.tensor(tok.byte_lengths()), seq_len=32, batch_size=4, max_batches=2)
    assert figures["tokens"] == ref.tokens == 2 * 4 * 32
    assert abs(figures["bits_per_byte"] - ref.bits_per_byte) < 1e-9
    assert abs(figures["perplexity"] - math.exp(ref.loss)) < 1e-9 * figures["perplexity"]
    code, out, _ = run_cli(capsys, "eval", trained_dir, "--max-batches", "1")
    assert code == 0 and "val split" in out and "bits/byte" in out
