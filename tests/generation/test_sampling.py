"""The sampler is total: every accepted temperature, top-k and top-p gives a valid token, and logits a model
should never produce are a named error rather than a NaN distribution."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet.generation import sample_next
from retnet.generation.sampling import NonFiniteLogitsError, filter_logits, invalid_rows

LOGITS = torch.tensor([[0.5, 3.0, -1.0, 2.9, float("-inf")], [1.0, 1.0, 0.0, -2.0, 0.5]])


@pytest.mark.parametrize(
    "kw", [{"temperature": 5e-324}, {"temperature": 1e-40}, {"temperature": 1.0, "top_p": 1e-300}, {"top_p": 5e-324}]
)
def test_extreme_but_accepted_parameters_are_the_greedy_limit(kw):
    """Issue #20.2: temperature 5e-324 / 1e-40 and top_p 1e-300 made NaN and torch.multinomial raised."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        got = sample_next(LOGITS, generator=g, **kw)
        assert got[0] == 1 and got[1] in (0, 1)  # row 1 ties between tokens 0 and 1


def test_huge_logits_at_small_temperature_do_not_overflow():
    logits = torch.tensor([[3e38, -3e38, 1e38]])
    assert sample_next(logits, temperature=1e-3).tolist() == [0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits_are_a_named_error(bad):
    logits = LOGITS.clone()
    logits[1, 2] = bad
    assert invalid_rows(logits).tolist() == [False, True]
    for temperature in (0.0, 0.7):
        with pytest.raises(NonFiniteLogitsError, match=r"row\(s\) \[1\]"):
            sample_next(logits, temperature=temperature)
    with pytest.raises(NonFiniteLogitsError):
        sample_next(torch.full((1, 4), float("-inf")))


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_parameters_outside_the_domain_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        sample_next(LOGITS, **kw)


@settings(max_examples=150, deadline=None)
@given(
    temperature=st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=100.0, allow_subnormal=True)),
    top_p=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_subnormal=True)),
    top_k=st.one_of(st.none(), st.integers(1, 10)),
    scale=st.sampled_from([1e-30, 1.0, 1e4, 1e30]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_accepted_parameter_gives_a_token_of_the_support(temperature, top_p, top_k, scale, seed):
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(seed)) * scale
    logits[:, 6] = float("-inf")  # a masked token is never sampled
    tok = sample_next(logits, temperature=temperature, top_p=top_p, top_k=top_k, generator=torch.Generator())
    assert tok.shape == (3,) and bool(((tok >= 0) & (tok < 6)).all())
    kept = filter_logits(logits, top_k=top_k, top_p=top_p)
    assert bool(torch.isfinite(kept).any(-1).all())  # the most likely token always survives the filters
    assert bool(torch.isfinite(kept.gather(-1, logits.argmax(-1, keepdim=True))).all())
    assert math.isfinite(temperature)
