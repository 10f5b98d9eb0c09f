import json

from retnet.data.tokenizers import Tokenizer
from retnet.models import RetNetForCausalLM
from retnet.training.metrics import read_metrics

from .helpers import run_cli

SMALL = ["--model-set", "hidden_size=32", "--model-set", "value_dim=32", "--model-set", "ffn_dim=64"]


def test_train_writes_a_model_directory(tmp_path, capsys, corpus_file):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "train",
        "--preset",
        "smoke",
        "--data",
        corpus_file,
        "--out",
        out,
        "--steps",
        "4",
        "--seq-len",
        "32",
        "--checkpoint-interval",
        "2",
        "--no-progress",
        *SMALL,
    )
    assert code == 0
    assert "bits/byte" in stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training.json", "metrics.csv", "loss.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    model = RetNetForCausalLM.from_pretrained(str(out))
    assert model.config.hidden_size == 32
    assert Tokenizer.load(out).kind == "byte"
    info = json.loads((out / "training.json").read_text())
    assert info["final_validation"]["bits_per_byte"] > 0
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == [1, 2, 3, 4]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_config_file_stop_and_resume(tmp_path, capsys, corpus_file):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"preset: smoke\ndata: [{str(corpus_file)!r}]\nout: {str(tmp_path / 'run')!r}\nsteps: 6\nseq_len: 32\n"
        "checkpoint_interval: 2\nmodel_overrides: {hidden_size: 32, value_dim: 32, ffn_dim: 64}\n"
    )
    assert run_cli(capsys, "train", "--config", cfg, "--stop-after", "3", "--quiet")[0] == 0
    assert not (tmp_path / "run" / "model.safetensors").exists()
    code, stdout, _ = run_cli(capsys, "train", "--config", cfg, "--resume", "--no-progress")
    assert code == 0 and "resumed from" in stdout and "at step 3" in stdout
    assert [int(r["step"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")] == list(range(1, 7))
    assert (tmp_path / "run" / "model.safetensors").is_file()
