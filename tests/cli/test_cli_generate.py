import torch

from retnet.cli.model_dir import load_model_dir

from .helpers import run_cli


def test_fixed_seed_is_reproducible(capsys, trained_dir):
    args = ["generate", trained_dir, "--prompt", "ROMEO:", "--max-tokens", "30", "--seed", "7", "--top-k", "50"]
    code, first, _ = run_cli(capsys, *args)
    assert code == 0 and first.startswith("ROMEO:")
    assert run_cli(capsys, *args)[1] == first
    other = run_cli(capsys, *args[:-4], "--seed", "8")[1]
    assert other != first


def test_greedy_streaming_matches_full_recomputation(capsys, trained_dir):
    """Recurrent decoding after a chunkwise prefill picks the same tokens as re-running the whole sequence."""
    code, text, _ = run_cli(
        capsys, "generate", trained_dir, "--prompt", "JULIET:", "--max-tokens", "12", "--temperature", "0"
    )
    assert code == 0
    model, tok = load_model_dir(trained_dir)
    ids = tok.encode("JULIET:")
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([ids]), mode="parallel").logits[0, -1]
            ids.append(int(logits.argmax()))
    assert text == tok.decode(ids) + "\n"


def test_top_p_and_top_k_run(capsys, trained_dir):
    code, text, _ = run_cli(capsys, "generate", trained_dir, "--max-tokens", "5", "--top-p", "0.5", "--top-k", "3")
    assert code == 0 and text.endswith("\n")
