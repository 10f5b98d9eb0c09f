"""The rotation matches the official definition; norms behave as documented."""

from __future__ import annotations

import math

import torch

from retnet.layers import HeadNorm, RetNetRotary, apply_rotary, retnet_angles, rotate_every_two


def test_angles_follow_official_linspace():
    a = retnet_angles(8)
    expected = [1 / 10000 ** (i / 3) for i in range(4)]
    assert torch.allclose(a[::2], torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(a[::2], a[1::2])


def test_rotate_every_two():
    x = torch.arange(6.0)
    assert rotate_every_two(x).tolist() == [-1.0, 0.0, -3.0, 2.0, -5.0, 4.0]


def test_rotation_is_relative():
    """q_m . k_n after rotation depends only on n - m."""
    rot = RetNetRotary(16)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def dot(m, n):
        sq, cq = rot(torch.tensor([[m]]), torch.float64)
        sk, ck = rot(torch.tensor([[n]]), torch.float64)
        return float((apply_rotary(q, sq, cq) * apply_rotary(k, sk, ck)).sum())

    assert math.isclose(dot(3, 7), dot(1003, 1007), rel_tol=1e-9)


def test_positions_distinct_at_long_range_in_low_precision_models():
    rot = RetNetRotary(64)
    s1, _ = rot(torch.tensor([[30000]]), torch.bfloat16)
    s2, _ = rot(torch.tensor([[30001]]), torch.bfloat16)
    assert s1.dtype == torch.float32 and not torch.equal(s1, s2)


def test_head_norm_is_scale_invariant_per_head():
    o = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    scale = torch.rand(1, 1, 3, 1, dtype=torch.float64) + 0.5
    for kind in ("rms", "group", "layer"):
        norm = HeadNorm(3, 8, kind, eps=0.0).double()
        assert torch.allclose(norm(o * scale), norm(o), atol=1e-12)


def test_complex_rotation_equals_the_pairwise_formula():
    """``apply_rotary``'s complex product (float32/float64) equals ``x cos + rotate_every_two(x) sin`` times the
    scale, for contiguous and strided inputs; other dtypes take the formula itself."""
    gen = torch.Generator().manual_seed(0)
    rot = RetNetRotary(8)
    sin, cos = rot(torch.arange(5)[None].expand(2, 5), torch.float64)
    x = torch.randn(2, 5, 3, 8, generator=gen, dtype=torch.float64)
    strided = torch.randn(2, 5, 8, 3, generator=gen, dtype=torch.float64).transpose(-1, -2)  # pairs not adjacent
    for inp in (x, strided, x[:, 1:]):
        s, c = sin[:, -inp.shape[1] :], cos[:, -inp.shape[1] :]
        want = (inp * c[:, :, None] + rotate_every_two(inp) * s[:, :, None]) * 0.25
        torch.testing.assert_close(apply_rotary(inp, s, c, 0.25), want, rtol=1e-14, atol=1e-14)
    half = apply_rotary(x.half(), sin.half(), cos.half(), 0.5)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), apply_rotary(x, sin, cos, 0.5), rtol=1e-2, atol=1e-2)
