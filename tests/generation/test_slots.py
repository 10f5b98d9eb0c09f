"""State slots: any sequence of joins, leaves and steps keeps every row's state exactly (fixed-size tensors
and growing KV caches of different lengths alike), with the rows compacted in ``[0, n)``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet.generation.slots import StateSlots
from retnet.layers.attention import KVCache
from retnet.models.state import RetNetState


def row_state(seed: int, kv_len: int) -> RetNetState:
    g = torch.Generator().manual_seed(seed)
    kv = KVCache(torch.randn(1, 2, kv_len, 3, generator=g), torch.randn(1, 2, kv_len, 3, generator=g))
    layers = [torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64), kv, None]
    return RetNetState(layers, torch.tensor([seed]), shared=None)


def assert_same(a: RetNetState, b: RetNetState) -> None:
    assert torch.equal(a.offset, b.offset) and torch.equal(a.layers[0], b.layers[0]) and a.layers[2] is None
    assert a.layers[1].mask is None and torch.equal(a.layers[1].k, b.layers[1].k)
    assert torch.equal(a.layers[1].v, b.layers[1].v)


def step(state: RetNetState) -> RetNetState:
    """A stand-in for a model step: every row's tensor changes, each KV cache gains a slot."""
    kv = state.layers[1]
    grown = kv.append(kv.k[:, :, -1:] + 1, kv.v[:, :, -1:] - 1, None)
    return RetNetState([state.layers[0] * 2 + 1, grown, None], state.offset + 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["join", "leave", "step"]), st.integers(0, 50)), max_size=25))
def test_joins_leaves_and_steps_keep_every_row(ops):
    slots = StateSlots(4)
    expected: list[RetNetState] = []  # row i's state, mirrored by hand
    for seed, (op, x) in enumerate(ops):
        if op == "join" and slots.n < 4:
            state = row_state(seed, 1 + x % 7)
            assert slots.append(state) == len(expected)
            expected.append(state)
        elif op == "leave" and slots.n:
            i = x % slots.n
            slots.remove(i)
            expected[i] = expected[-1]
            expected.pop()
        elif op == "step" and slots.n:
            slots.store(step(slots.view()))
            expected = [step(s) for s in expected]
        assert slots.n == len(expected)
        if expected:  # padding no remaining row needs is dropped: the batch cache is as long as its longest row
            assert slots.view().layers[1].length == max(s.layers[1].length for s in expected)
        for i, want in enumerate(expected):
            assert_same(slots.row(i), want)


def test_a_step_that_updates_the_views_in_place_needs_no_copy():
    slots = StateSlots(2)
    slots.append(row_state(0, 2))
    view = slots.view()
    view.layers[0].mul_(3)
    slots.store(view)  # same memory: nothing to copy
    assert torch.equal(slots.row(0).layers[0], row_state(0, 2).layers[0] * 3)


def test_capacity_and_shape_errors_are_named():
    slots = StateSlots(1)
    slots.append(row_state(0, 1))
    with pytest.raises(RuntimeError, match="all 1 state slots"):
        slots.append(row_state(1, 1))
    with pytest.raises(ValueError, match="one-row"):
        StateSlots(2).append(RetNetState.cat([row_state(0, 1), row_state(1, 1)]))
    with pytest.raises(ValueError, match="capacity"):
        StateSlots(0)


def test_buffers_are_allocated_once():
    slots = StateSlots(3)
    slots.append(row_state(0, 2))
    buffer = slots.view().layers[0].data_ptr()
    slots.remove(0)
    slots.append(row_state(1, 4))  # the batch drained and refilled: same memory
    assert slots.view().layers[0].data_ptr() == buffer
    assert_same(slots.row(0), row_state(1, 4))
