"""Conversation state files hold every variant's state: hybrid attention caches and YOCO's shared cache."""

from __future__ import annotations

import pytest
import torch

from retnet.models import RetNetConfig, RetNetForCausalLM
from retnet.serving.state_io import check_state, load_state, save_state


@pytest.mark.parametrize("extra", [{"block_types": "GA"}, {"architecture": "yoco"}, {}])
def test_state_round_trip_for_variants(tmp_path, extra):
    torch.manual_seed(0)
    cfg = RetNetConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, value_dim=16, ffn_dim=16, **extra)
    model = RetNetForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (1, 9))
    state = model(ids[:, :6], use_cache=True).state
    save_state(tmp_path / "s.safetensors", state)
    loaded, _ = load_state(tmp_path / "s.safetensors")
    check_state(loaded, state)
    assert loaded.nbytes() == state.nbytes()
    a = model(ids[:, 6:], state=state).logits
    b = model(ids[:, 6:], state=loaded).logits
    assert torch.equal(a, b)


def test_check_state_accepts_longer_caches_but_not_other_models():
    torch.manual_seed(0)
    cfg = RetNetConfig(
        vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, value_dim=16, ffn_dim=16, block_types="GA"
    )
    model = RetNetForCausalLM(cfg).eval()
    short = model(torch.randint(0, 50, (1, 2)), use_cache=True).state
    long = model(torch.randint(0, 50, (1, 20)), use_cache=True).state
    check_state(long, short)
    other = RetNetForCausalLM(cfg.replace(block_types="GG")).eval()
    with pytest.raises(ValueError, match="different layer structure"):
        check_state(other(torch.randint(0, 50, (1, 2)), use_cache=True).state, short)


def _one_state(tmp_path):
    from retnet.models import RetNetState

    st = RetNetState([torch.rand(1, 2, 4, 6) for _ in range(2)], torch.tensor([5]))
    path = tmp_path / "s.safetensors"
    save_state(path, st)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "symlink", "nan", "inf", "offset", "layout"])
def test_a_damaged_state_file_is_a_named_error(tmp_path, damage):
    """Issue #20.5: truncated, garbage or symlinked state files raised errors nobody caught (HTTP 500); a
    NaN-filled one was served and poisoned the decode. Every one must be a StateFileError naming the file."""
    from safetensors.torch import load_file, save_file

    from retnet.serving.state_io import StateFileError

    path = _one_state(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x07" * 64 + data[64:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "symlink":
        (tmp_path / "real").write_bytes(data)
        path.unlink()
        path.symlink_to(tmp_path / "real")
    else:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
        tensors = load_file(path)
        if damage in ("nan", "inf"):
            tensors["layers.0"][0, 1, 2, 3] = float(damage)
        elif damage == "offset":
            tensors["offset"] = torch.tensor([-3])
        else:
            meta["structure"] = '{"l": [{"t": "missing"}]}'
        save_file(tensors, path, metadata=meta)
    with pytest.raises(StateFileError, match="s.safetensors"):
        load_state(path)
