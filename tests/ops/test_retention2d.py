"""2-D retention: the separable form equals the full form; the axial (RMT) form does not, except for unit scores."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from retnet.ops import manhattan_log_decay, official_log_decay, retention_2d
from tests.ops.helpers import rel_err


def _inputs(B, gh, gw, H, Dk, Dv, seed=0):
    gen = torch.Generator().manual_seed(seed)
    N = gh * gw
    q = torch.randn(B, N, H, Dk, generator=gen, dtype=torch.float64)
    k = torch.randn(B, N, H, Dk, generator=gen, dtype=torch.float64)
    v = torch.randn(B, N, H, Dv, generator=gen, dtype=torch.float64)
    g = torch.log(torch.rand(H, generator=gen, dtype=torch.float64) * 0.5 + 0.4)
    return q, k, v, g


@given(
    B=st.integers(1, 2),
    gh=st.integers(1, 7),
    gw=st.integers(1, 7),
    H=st.integers(1, 3),
    Dk=st.sampled_from([1, 4]),
    Dv=st.sampled_from([1, 3]),
    seed=st.integers(0, 1000),
)
def test_separable_equals_parallel(B, gh, gw, H, Dk, Dv, seed):
    q, k, v, g = _inputs(B, gh, gw, H, Dk, Dv, seed)
    ref = retention_2d(q, k, v, g, (gh, gw), mode="parallel")
    assert rel_err(retention_2d(q, k, v, g, (gh, gw), mode="separable"), ref) < 1e-10


def test_parallel_matches_definition():
    q, k, v, g = _inputs(1, 3, 4, 2, 4, 2)
    o = retention_2d(q, k, v, g, (3, 4), mode="parallel")
    ref = torch.zeros_like(o)
    for n in range(12):
        for m in range(12):
            d = abs(n // 4 - m // 4) + abs(n % 4 - m % 4)
            ref[0, n] += (q[0, n] * k[0, m]).sum(-1, keepdim=True) * torch.exp(d * g)[:, None] * v[0, m]
    assert rel_err(o, ref) < 1e-12
    assert manhattan_log_decay((3, 4), g)[0, 0, 11] == 5 * g[0]


def test_axial_form_differs_in_general_but_equals_for_unit_scores():
    """Documents where RMT's decomposition is exact: only when every q.k score is 1 (pure decay mixing)."""
    q, k, v, g = _inputs(2, 4, 5, 2, 3, 3, seed=1)
    full = retention_2d(q, k, v, g, (4, 5), mode="parallel")
    assert rel_err(retention_2d(q, k, v, g, (4, 5), mode="axial"), full) > 1e-2
    ones = torch.zeros_like(q)
    ones[..., 0] = 1.0
    full1 = retention_2d(ones, ones, v, g, (4, 5), mode="parallel")
    assert rel_err(retention_2d(ones, ones, v, g, (4, 5), mode="axial"), full1) < 1e-12


def test_errors():
    q, k, v, g = _inputs(1, 2, 3, 2, 4, 2)
    with pytest.raises(ValueError, match=r"grid \(height, width\)"):
        retention_2d(q, k, v, g, (2, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        retention_2d(q, k, v, g, (2, 3), mode="diag")
    with pytest.raises(ValueError, match="log_decay must have shape"):
        retention_2d(q, k, v, official_log_decay(3), (2, 3))
