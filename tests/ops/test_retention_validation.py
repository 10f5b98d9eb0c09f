"""Every kind of bad input gets a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch

from retnet.ops import official_log_decay, paper_log_decay, retention
from retnet.ops.validation import validate_retention_args


def _ok(B=2, T=5, H=3, Dk=4, Dv=6):
    return (torch.randn(B, T, H, Dk), torch.randn(B, T, H, Dk), torch.randn(B, T, H, Dv), official_log_decay(H))


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: {**a, "q": torch.randn(2, 5, 3)}, ValueError, r"q must have shape \[B, T, H, Dk\]"),
        (lambda a: {**a, "k": torch.randn(2, 5, 3, 5)}, ValueError, r"k must have the shape of q"),
        (lambda a: {**a, "k": torch.randn(1, 5, 3, 4)}, ValueError, r"k must have the shape of q"),
        (lambda a: {**a, "v": torch.randn(2, 4, 3, 6)}, ValueError, r"v must have shape \[B, T, H, Dv\]"),
        (lambda a: {**a, "v": torch.randn(2, 5, 2, 6)}, ValueError, r"v must have shape"),
        (lambda a: {**a, "log_decay": torch.zeros(4)}, ValueError, r"log_decay must have shape \[H\]"),
        (lambda a: {**a, "log_decay": torch.full((3,), 0.1)}, ValueError, r"log_decay must be <= 0"),
        (lambda a: {**a, "chunk_size": 0}, ValueError, r"chunk_size must be an int >= 1"),
        (lambda a: {**a, "chunk_size": 2.5}, ValueError, r"chunk_size"),
        (lambda a: {**a, "mode": "fast"}, ValueError, r"mode must be one of"),
        (lambda a: {**a, "initial_state": torch.zeros(2, 3, 4, 5)}, ValueError, r"initial_state must have shape"),
        (lambda a: {**a, "attention_mask": torch.ones(2, 4)}, ValueError, r"attention_mask must have shape"),
        (lambda a: {**a, "attention_mask": torch.full((2, 5), 2)}, ValueError, r"only 0 \(padding\) and 1"),
        (lambda a: {**a, "q": torch.ones(2, 5, 3, 4, dtype=torch.long)}, TypeError, r"q must be a floating-point"),
        (lambda a: {**a, "v": [1, 2]}, TypeError, r"v must be a torch.Tensor"),
        (lambda a: {**a, "q": torch.randn(2, 5, 3, 4, device="meta")}, ValueError, r"share one device"),
    ],
)
def test_bad_input_names_the_argument(mutate, exc, match):
    q, k, v, g = _ok()
    args = mutate({"q": q, "k": k, "v": v, "log_decay": g})
    with pytest.raises(exc, match=match):
        retention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("log_decay"), **args)


def test_decay_schedules():
    off = official_log_decay(8, dtype=torch.float64)
    assert torch.allclose(off.exp(), 1 - 2.0 ** (-5 - torch.arange(8, dtype=torch.float64)))
    pap = paper_log_decay(4, dtype=torch.float64)
    assert torch.isclose(1 - pap.exp()[0], torch.tensor(1 / 32, dtype=torch.float64))
    assert torch.isclose(1 - pap.exp()[-1], torch.tensor(1 / 512, dtype=torch.float64))
    # Heads whose gamma is exactly 1.0 in float32 still decay in log space.
    assert (official_log_decay(32) < 0).all()
    with pytest.raises(ValueError, match="num_heads"):
        official_log_decay(0)


def _bad_values(device):
    q, k, v, _ = (t.to(device) for t in _ok())
    return q, k, v, torch.full((3,), 0.5, device=device), torch.full((2, 5), 2, device=device)


def test_bad_values_raise_on_the_cpu_unless_told_not_to():
    q, k, v, g, mask = _bad_values("cpu")
    with pytest.raises(ValueError, match="log_decay must be <= 0"):
        retention(q, k, v, g)
    with pytest.raises(ValueError, match="attention_mask must hold only 0"):
        retention(q, k, v, -g, attention_mask=mask)
    o, _ = retention(q, k, v, g, check_values=False)
    assert o.shape == v.shape


def test_off_the_cpu_only_shapes_are_checked_unless_values_are_asked_for():
    # A meta tensor has no values: reading one (bool(), .item()) raises where a device would synchronise.
    q, k, v, g, mask = _bad_values("meta")
    with pytest.raises(RuntimeError):
        bool((g > 0).any())
    s0 = torch.zeros(2, 3, 4, 6, device="meta")
    for mode in ("auto", "parallel", "chunkwise", "recurrent"):
        validate_retention_args(q, k, v, g, mode, 64, None, s0, mask)
    validate_retention_args(q, k, v, g, "auto", 64, None, None, mask, backend="triton", check_values=False)
    with pytest.raises(ValueError, match="log_decay must have shape"):
        validate_retention_args(q, k, v, torch.zeros(4, device="meta"), "auto", 64, None, None, None)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        validate_retention_args(q, k, v, g, "auto", 64, None, None, torch.ones(2, 4, device="meta"))
    with pytest.raises(RuntimeError):
        validate_retention_args(q, k, v, g, "auto", 64, None, None, mask, check_values=True)


def test_backend_names_the_argument():
    q, k, v, g = _ok()
    with pytest.raises(ValueError, match="backend must be one of"):
        retention(q, k, v, g, backend="cuda")
