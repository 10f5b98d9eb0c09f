"""Issue 20, items 6 and 7, as a user would trigger them: each bad flag, config field or combination is one
line naming it, exit code 2, refused before any work and with nothing written."""

import json
import time

import pytest
import torch

from .helpers import check_user_error, run_cli

TRAIN = ["train", "--preset", "smoke", "--no-progress", "--quiet"]


def _train(out, *extra):
    return [*TRAIN, "--out", out, *extra]


# --- item 6: tracebacks instead of one-line errors -------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-0.5"])
def test_train_lr_must_be_finite_and_positive(capsys, existing_run, value):
    line = check_user_error(capsys, _train(existing_run, f"--lr={value}"), "--lr", existing_run)
    assert value in line


def test_train_device_cuda_without_cuda(capsys, monkeypatch, existing_run):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_user_error(capsys, _train(existing_run, "--device", "cuda"), "CUDA is not available", existing_run)


def test_generate_device_cuda_without_cuda(capsys, monkeypatch, existing_run):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = check_user_error(capsys, ["generate", existing_run, "--device", "cuda"], "--device cuda", existing_run)
    assert "CUDA is not available" in line


@pytest.mark.parametrize("command", ["train", "generate", "eval", "chat"])
def test_bogus_device_is_named(capsys, existing_run, command):
    argv = _train(existing_run, "--device", "bogus") if command == "train" else [command, existing_run]
    if command != "train":
        argv += ["--device", "bogus"]
    line = check_user_error(capsys, argv, "--device", existing_run)
    assert "'bogus'" in line


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"steps": "ten"}, "steps must be an integer, got 'ten'"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"seq_len": 32.5}, "seq_len must be an integer"),
        ({"fsdp": "yes"}, "fsdp must be true or false"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
        ({"data": 5}, "data must be a list of paths"),
        ({"model_overrides": [1]}, "model_overrides must be a mapping"),
        ({"eval_batches": 0}, "eval_batches must be >= 1"),
        ({"seed": -1}, "seed must be in [0, 18446744073709551615]"),
    ],
)
def test_config_file_field_of_wrong_type_or_bounds(tmp_path, capsys, existing_run, setting, match):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(setting))
    line = check_user_error(capsys, _train(existing_run, "--config", cfg), match, existing_run)
    assert "run.json" in line


@pytest.mark.parametrize(("flag", "value"), [("--temperature", "nan"), ("--temperature", "-inf"), ("--top-p", "nan")])
def test_generate_non_finite_sampling_flags(capsys, existing_run, flag, value):
    check_user_error(capsys, ["generate", existing_run, flag, value], flag, existing_run)


@pytest.mark.parametrize("seed", ["99999999999999999999999", "18446744073709551616", "-1"])
def test_generate_seed_out_of_range(capsys, existing_run, seed):
    check_user_error(capsys, ["generate", existing_run, "--seed", seed], "--seed", existing_run)


def test_generate_largest_seed_works(capsys, existing_run):
    code, out, err = run_cli(capsys, "generate", existing_run, "--max-tokens", "3", "--seed", str(2**64 - 1))
    assert code == 0 and out, err


@pytest.mark.parametrize(("flag", "value"), [("--temperature", "1e-45"), ("--top-p", "1e-50")])
def test_generate_tiny_temperature_or_top_p_is_the_greedy_limit(capsys, existing_run, flag, value):
    argv = ["generate", existing_run, "--prompt", "ROMEO:", "--max-tokens", "8"]
    code, greedy, err = run_cli(capsys, *argv, "--temperature", "0")
    assert code == 0, err
    code, text, err = run_cli(capsys, *argv, flag, value, *(["--temperature", "1"] if flag == "--top-p" else []))
    assert (code, err) == (0, "")
    assert text == greedy


# --- item 7: wrong answers without an error ---------------------------------------------------------------


def test_eval_max_batches_zero(capsys, existing_run):
    check_user_error(capsys, ["eval", existing_run, "--max-batches", "0"], "--max-batches", existing_run)


@pytest.mark.parametrize(("flag", "value"), [("--val-fraction", "0"), ("--seq-len", "0"), ("--batch-size", "0")])
def test_eval_zero_is_refused_not_replaced_by_the_default(capsys, existing_run, flag, value):
    check_user_error(capsys, ["eval", existing_run, flag, value], flag, existing_run)


@pytest.mark.parametrize("value", ["-1", "0"])
def test_train_stop_after_must_be_positive(capsys, existing_run, value):
    check_user_error(capsys, _train(existing_run, "--stop-after", value), "--stop-after", existing_run)


def test_train_stop_after_before_the_resumed_checkpoint(capsys, existing_run, corpus_file):
    # existing_run has checkpoints at steps 2 and 4 (BPE, vocab 300, seq_len 32, the tiny model)
    argv = [
        *_train(existing_run, "--resume", "--stop-after", "3", "--data", corpus_file),
        *("--tokenizer", "bpe", "--vocab-size", "300", "--seq-len", "32", "--threads", "1"),
        *("--model-set", "hidden_size=32", "--model-set", "value_dim=32", "--model-set", "ffn_dim=64"),
    ]
    check_user_error(capsys, argv, "--stop-after 3 is not after the checkpoint's step 4", existing_run)


def test_train_arch_without_task(capsys, existing_run):
    check_user_error(
        capsys, _train(existing_run, "--arch", "transformer"), "--arch applies only with --task", existing_run
    )


def test_train_task_with_language_model_flags(tmp_path, capsys):
    out = tmp_path / "genre"
    line = check_user_error(
        capsys,
        ["train", "--task", "genre", "--tokenizer", "bpe", "--seq-len", "64", "--out", out],
        "do not apply to --task genre",
        tmp_path,
    )
    assert "--tokenizer" in line and "--seq-len" in line and not out.exists()


def test_eval_task_with_language_model_flags(capsys, existing_run):
    check_user_error(
        capsys, ["eval", existing_run, "--task", "digits", "--max-batches", "2"], "--max-batches", existing_run
    )


def test_vocab_size_with_the_byte_tokenizer(capsys, existing_run):
    # the smoke preset trains a byte tokenizer: a vocabulary size would be ignored
    check_user_error(capsys, _train(existing_run, "--vocab-size", "500"), "--vocab-size", existing_run)


def test_eval_val_fraction_with_the_whole_corpus(capsys, existing_run, corpus_file):
    argv = ["eval", existing_run, "--data", corpus_file, "--split", "all", "--val-fraction", "0.2"]
    check_user_error(capsys, argv, "--val-fraction", existing_run)


@pytest.mark.parametrize("how", ["config", "flag"])
def test_huge_model_is_refused_at_once(tmp_path, capsys, existing_run, how):
    if how == "config":
        cfg = tmp_path / "big.yaml"
        cfg.write_text("model_overrides: {num_layers: 1000000}\n")
        extra = ["--config", cfg]
    else:
        extra = ["--model-set", "num_layers=1000000"]
    t0 = time.perf_counter()
    check_user_error(capsys, _train(existing_run, *extra), "num_layers 1000000", existing_run)
    assert time.perf_counter() - t0 < 10


def test_huge_batch_is_refused_at_once(capsys, existing_run):
    t0 = time.perf_counter()
    check_user_error(capsys, _train(existing_run, "--batch-size", "10000000000"), "batch_size", existing_run)
    assert time.perf_counter() - t0 < 10


def test_usage_errors_are_one_line(capsys, existing_run):
    check_user_error(capsys, _train(existing_run, "--steps", "ten"), "--steps", existing_run)
    check_user_error(capsys, ["generate", existing_run, "--nope"], "--nope", existing_run)
