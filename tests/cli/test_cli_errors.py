"""Bad input: a one-line error naming the culprit, exit code 2, nothing overwritten."""

from .helpers import check_user_error as _check

SMALL = ["--model-set", "hidden_size=32", "--model-set", "value_dim=32", "--model-set", "ffn_dim=64"]


def test_missing_corpus(tmp_path, capsys, existing_run):
    _check(
        capsys,
        ["train", "--preset", "smoke", "--data", tmp_path / "nope.txt", "--out", existing_run],
        "nope.txt",
        existing_run,
    )


def test_empty_corpus(tmp_path, capsys, existing_run):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    _check(capsys, ["train", "--preset", "smoke", "--data", empty, "--out", existing_run], "empty.txt", existing_run)


def test_corpus_smaller_than_one_sequence(tmp_path, capsys, existing_run):
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be: that is the question.\n" * 3)
    _check(
        capsys,
        ["train", "--preset", "smoke", "--data", small, "--seq-len", "64", "--out", existing_run],
        "too small",
        existing_run,
    )


def test_unknown_preset(capsys, existing_run):
    _check(capsys, ["train", "--preset", "gigantic", "--out", existing_run], "unknown preset 'gigantic'", existing_run)


def test_unwritable_output_folder(tmp_path, capsys, corpus_file):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _check(
        capsys,
        ["train", "--preset", "smoke", "--data", corpus_file, "--out", blocker / "run"],
        "is not a folder",
        tmp_path,
    )
    _check(capsys, ["train", "--preset", "smoke", "--data", corpus_file, "--out", blocker], "is not a folder", tmp_path)
    _check(
        capsys,
        ["train", "--preset", "smoke", "--data", corpus_file, "--out", "/proc/retnet-run"],
        "/proc/retnet-run",
        tmp_path,
    )


def test_resume_with_a_checkpoint_from_another_model(capsys, existing_run, corpus_file):
    # existing_run was trained with hidden_size 32 and a BPE tokenizer; resuming as a 48-wide model must refuse
    argv = [
        "train",
        "--preset",
        "smoke",
        "--data",
        corpus_file,
        "--out",
        existing_run,
        "--resume",
        "--model-set",
        "hidden_size=48",
        "--model-set",
        "value_dim=32",
        "--model-set",
        "ffn_dim=64",
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
        "--seq-len",
        "32",
    ]
    _check(capsys, argv, "is from another model: hidden_size", existing_run)


def test_resume_without_checkpoints(tmp_path, capsys, corpus_file):
    _check(
        capsys,
        ["train", "--preset", "smoke", "--data", corpus_file, "--out", tmp_path / "fresh", "--resume"],
        "no checkpoint",
        tmp_path,
    )


def test_generate_and_eval_name_a_bad_model_dir(tmp_path, capsys, existing_run):
    _check(capsys, ["generate", tmp_path / "nope"], "does not exist", tmp_path)
    (tmp_path / "notmodel").mkdir()
    _check(capsys, ["eval", tmp_path / "notmodel"], "not a model directory", tmp_path)
    _check(capsys, ["generate", existing_run, "--top-p", "1.5"], "--top-p", existing_run)
    _check(capsys, ["info", "gigantic"], "unknown preset", tmp_path)


def test_tokenizer_of_another_model(tmp_path, capsys, existing_run):
    from retnet.data.tokenizers import Tokenizer

    tokenizer = Tokenizer.byte()
    tokenizer.hf.add_tokens([f"<extra{i}>" for i in range(60)])
    tokenizer.save(existing_run)  # 316 tokens; the model has 300 (fewer would be padded embeddings: allowed)
    _check(capsys, ["generate", existing_run, "--prompt", "x"], "different models", existing_run)
