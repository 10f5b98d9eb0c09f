from pathlib import Path

import pytest

from retnet.training.config import TRAIN_PRESETS, build_config, read_config_file
from retnet.training.errors import TrainError


def test_default_preset_is_the_readme_job():
    cfg = build_config()
    assert cfg.out == "runs/shakespeare" and cfg.data == []
    for key, value in TRAIN_PRESETS["shakespeare"].items():
        assert getattr(cfg, key) == value


def test_precedence_preset_file_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: smoke\nsteps: 7\nlr: 0.01\nmodel_overrides:\n  hidden_size: 48\n")
    cfg = build_config(None, read_config_file(f), {"lr": 0.02, "seq_len": None})
    assert (cfg.steps, cfg.lr, cfg.seq_len) == (7, 0.02, TRAIN_PRESETS["smoke"]["seq_len"])
    assert cfg.model_overrides["hidden_size"] == 48 and cfg.model_overrides["num_layers"] == 1


def test_toml_and_json_files(tmp_path):
    t = tmp_path / "c.toml"
    t.write_text('tokenizer = "byte"\nsteps = 3\n')
    assert read_config_file(t) == {"tokenizer": "byte", "steps": 3}
    j = tmp_path / "c.json"
    j.write_text('{"steps": 4}')
    assert build_config("smoke", read_config_file(j)).steps == 4


@pytest.mark.parametrize(
    ("content", "suffix", "match"),
    [
        ("steps: 3\n", ".ini", "must end in"),
        ("steps: [\n", ".yaml", "cannot be parsed"),
        ("- 1\n", ".yaml", "mapping"),
        ("stepz: 3\n", ".yaml", "unknown setting 'stepz'"),
        ("steps: 0\n", ".yaml", "steps must be >= 1"),
        ("tokenizer: words\n", ".yaml", "tokenizer must be"),
    ],
)
def test_bad_settings_are_named(tmp_path, content, suffix, match):
    f = tmp_path / f"c{suffix}"
    f.write_text(content)
    with pytest.raises(TrainError, match=match):
        build_config("smoke", read_config_file(f))


def test_unknown_preset_lists_known_ones():
    with pytest.raises(TrainError, match="unknown preset 'gigantic'.*shakespeare"):
        build_config("gigantic")
    with pytest.raises(TrainError, match="does not exist"):
        read_config_file("/nonexistent/c.yaml")


def test_config_file_is_read_with_a_size_limit(tmp_path):
    from retnet.models.directory import MAX_CONFIG_BYTES

    if Path("/dev/zero").exists():
        (tmp_path / "zero.yaml").symlink_to("/dev/zero")
        with pytest.raises(TrainError, match="zero.yaml is not a regular file"):
            read_config_file(tmp_path / "zero.yaml")
    with open(tmp_path / "huge.json", "wb") as fh:
        fh.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(TrainError, match="huge.json is too large"):
        read_config_file(tmp_path / "huge.json")
    (tmp_path / "bad.json").write_text('{"steps": 3,}')
    with pytest.raises(TrainError, match=r"bad.json is not valid JSON: .* line 1 column"):
        read_config_file(tmp_path / "bad.json")
