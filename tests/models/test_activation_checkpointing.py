"""Activation checkpointing per block changes memory, not results: same losses and gradients as without."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retnet.models import RetNetConfig, RetNetForCausalLM

VARIANTS = {
    "retention": {},
    "gated": {"gated": True},
    "hybrid": {"block_types": "RGAR"},
    "yoco": {"architecture": "yoco"},
}


def _losses(checkpointing: bool, variant: str, steps: int = 4) -> tuple[list[float], list[torch.Tensor]]:
    """Losses of a few AdamW steps (dropout on, chunkwise retention) and the final parameters."""
    torch.manual_seed(0)
    cfg = RetNetConfig(
        vocab_size=61,
        hidden_size=32,
        num_layers=4,
        num_heads=2,
        value_dim=48,
        ffn_dim=64,
        chunk_size=8,
        dropout=0.1,
        **VARIANTS[variant],
    )
    model = RetNetForCausalLM(cfg).train()
    model.model.gradient_checkpointing = checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 61, (2, 37), generator=gen)
        logits = model(ids[:, :-1], mode="chunkwise").logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpointed_training_matches(variant):
    plain, params = _losses(False, variant)
    ckpt, params_ckpt = _losses(True, variant)
    assert plain == pytest.approx(ckpt, rel=1e-6, abs=0)
    for a, b in zip(params, params_ckpt):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_checkpointing_recomputes_the_blocks():
    """With checkpointing, each block's forward runs again during backward (and only then). Counted at the
    block's start: the recomputation stops as soon as it has what backward needs."""
    torch.manual_seed(0)
    cfg = RetNetConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=2, value_dim=48, ffn_dim=64)
    model = RetNetForCausalLM(cfg).train()
    calls = []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 61, (1, 9))
    model.model.gradient_checkpointing = True
    model(ids).logits.sum().backward()
    assert len(calls) == 4  # 2 blocks, forward + recomputation
    calls.clear()
    with torch.no_grad():
        model(ids)
    model.eval()
    model(ids).logits.sum().backward()
    assert len(calls) == 4  # no gradients or eval mode: no recomputation
