"""Activation checkpointing per block changes memory, not results: same losses and gradients as without."""

from __future__ import annotations

import weakref
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from retnet.models import RetNetConfig, RetNetForCausalLM

VARIANTS = {
    "retention": {},
    "gated": {"gated": True},
    "hybrid": {"block_types": "RGAR"},
    "yoco": {"architecture": "yoco"},
}


def _config(variant: str, **overrides) -> RetNetConfig:
    """A 4-layer toy model of ``variant`` (chunk 8, so the test sequences span several chunks)."""
    size = dict(vocab_size=61, hidden_size=32, num_layers=4, num_heads=2, value_dim=48, ffn_dim=64, chunk_size=8)
    return RetNetConfig(**size, **VARIANTS[variant], **overrides)


def _losses(
    checkpointing: bool, variant: str, steps: int = 4, segment: int = 0, dropout: float = 0.1
) -> tuple[list[float], list[torch.Tensor]]:
    """Losses of a few AdamW steps (chunkwise retention) and the final parameters."""
    torch.manual_seed(0)
    model = RetNetForCausalLM(_config(variant, dropout=dropout)).train()
    model.model.gradient_checkpointing = checkpointing
    model.model.checkpoint_segment = segment
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


@pytest.mark.parametrize(("segment", "dropout"), [(0, 0.1), (8, 0.1), (8, 0.0), (13, 0.0)])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpointed_training_matches(variant, segment, dropout):
    """Whole-block checkpoints (segment 0) and retention blocks in segments of 8 or 13 of the 36 tokens (with
    dropout the blocks stay whole, so the masks are those of the unsegmented run)."""
    plain, params = _losses(False, variant, dropout=dropout)
    ckpt, params_ckpt = _losses(True, variant, segment=segment, dropout=dropout)
    assert plain == pytest.approx(ckpt, rel=1e-6, abs=0)
    for a, b in zip(params, params_ckpt):
        if segment == 0 or dropout:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        else:  # gradients summed over segments: float32 rounding in another order, which AdamW magnifies
            # for near-zero gradients; float64 gradients agree to 1e-10 (the test below)
            assert (a - b).norm() <= 1e-4 * a.norm()


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


def _float64_gradients(variant: str, segment: int | None, mode: str, mask: bool, **config) -> list[torch.Tensor]:
    """Loss gradients of a float64 model: ``segment`` None trains without checkpointing."""
    torch.manual_seed(0)
    model = RetNetForCausalLM(_config(variant, **config)).double().train()
    model.model.gradient_checkpointing = segment is not None
    model.model.checkpoint_segment = segment or 0
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 61, (2, 50), generator=gen)
    attention_mask = None
    if mask:  # the first row left-padded by 7 tokens
        attention_mask = torch.ones_like(ids)
        attention_mask[0, :7] = 0
    model(ids, labels=ids, attention_mask=attention_mask, mode=mode).loss.backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("segment", [1, 21])
@pytest.mark.parametrize("mode", ["chunkwise", "parallel"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_segments_give_the_same_gradients_float64(variant, mode, segment):
    """Each segment continues from the previous one's state (an input of its checkpoint): gradients equal
    those without checkpointing to float64 rounding, with padding and torchscale's decay normalisation."""
    config = {"normalize_decay": True} if variant == "retention" else {}
    mask = variant != "yoco"
    plain = _float64_gradients(variant, None, mode, mask, **config)
    for a, b in zip(plain, _float64_gradients(variant, segment, mode, mask, **config)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


class _LiveBytes(TorchDispatchMode):
    """Bytes of the tensors that operators create and that are still alive, and their peak (each storage
    counted once, freed when the last tensor object on it dies)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.refs: dict[int, list[int]] = {}  # storage address -> [tensor objects alive, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.refs:
                    self.refs[key] = [0, storage.nbytes()]
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.refs[key][0] += 1
                weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]


def test_segments_recompute_one_segment_at_a_time():
    """A retention block runs once per segment in the forward pass and once per segment when recomputed, and
    the backward pass holds one segment's recomputed intermediates at a time: the peak of live tensors falls
    with the segment length."""
    torch.manual_seed(0)
    cfg = RetNetConfig(vocab_size=16, hidden_size=32, num_layers=2, num_heads=2, value_dim=64, ffn_dim=64)
    model = RetNetForCausalLM(cfg).train()
    ids = torch.randint(0, 16, (1, 512))
    calls = []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[1]))

    def peak_bytes(segment: int) -> int:
        model.zero_grad(set_to_none=True)
        model.model.checkpoint_segment = segment
        with _LiveBytes() as tracker:
            model(ids).logits.sum().backward()
        return tracker.peak

    model.model.gradient_checkpointing = True
    whole = peak_bytes(0)
    assert calls == [512] * 4  # 2 blocks, forward + recomputation
    calls.clear()
    eighth = peak_bytes(64)
    assert calls == [64] * (2 * 2 * 8)  # 2 blocks x (forward + recomputation) x 8 segments
    assert eighth < 0.6 * whole


def test_segments_with_a_reentrant_checkpoint_function():
    """``transformers``' ``gradient_checkpointing_enable()`` installs the reentrant checkpoint, which only
    connects tensors passed as arguments: the state between segments is one, so gradients still flow."""
    torch.manual_seed(0)
    cfg = RetNetConfig(vocab_size=50, hidden_size=32, num_layers=3, num_heads=2, value_dim=48, ffn_dim=48, gated=True)
    model = RetNetForCausalLM(cfg).double().train()
    ids = torch.randint(0, 50, (2, 60))

    def gradients(checkpointing: bool) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.model.gradient_checkpointing = checkpointing
        model.model.checkpoint_segment = 16
        model.model._gradient_checkpointing_func = partial(checkpoint, use_reentrant=True)
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(gradients(False), gradients(True)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
