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
