"""The chunkwise form processed in segments (as on the CPU) equals the unsegmented form and the parallel form."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from retnet.ops.chunkwise import CPU_SEGMENT_BYTES, DEVICE_SEGMENT_BYTES, chunkwise_retention, segment_chunks
from retnet.ops.parallel import parallel_retention
from tests.ops.helpers import make_inputs, rel_err


@given(
    T=st.integers(1, 70),
    chunk=st.sampled_from([1, 3, 8, 16]),
    per_segment=st.integers(1, 5),
    gated=st.booleans(),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_segments_agree_with_parallel_float64(T, chunk, per_segment, gated, with_state, seed):
    q, k, v, g, s0, _ = make_inputs(2, T, 3, 4, 5, gated=gated, with_state=with_state, seed=seed)
    o_ref, s_ref = parallel_retention(q, k, v, g, s0, True)
    for cps in (per_segment, None):
        o, s = chunkwise_retention(q, k, v, g, s0, True, chunk, chunks_per_segment=cps)
        assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10, cps


def test_segment_gradients_match_unsegmented():
    q, k, v, g, s0, _ = make_inputs(2, 45, 2, 4, 3, gated=True, with_state=True, seed=3)

    def grads(cps):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, g, s0)]
        o, s = chunkwise_retention(*leaves[:4], leaves[4], True, 4, chunks_per_segment=cps)
        w = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)
        ((o * w).sum() + s.square().sum()).backward()
        return [t.grad for t in leaves]

    ref = grads(None)
    for cps in (1, 2, 5):
        for name, a, b in zip("q k v log_decay initial_state".split(), grads(cps), ref):
            assert rel_err(a, b) < 1e-10, (cps, name)


def test_segment_size_targets_a_few_mib():
    n = segment_chunks(1, 8, 64, 64, 128, 4, torch.device("cpu"))
    assert n == 8  # 512 tokens: [1, 8, 512, 128] float32 is 2 MiB
    assert n * 64 * 8 * 128 * 4 <= CPU_SEGMENT_BYTES
    assert segment_chunks(64, 32, 64, 256, 256, 4, torch.device("cpu")) == 1  # never below one chunk
    # Accelerators: larger segments, still bounded (no per-chunk tensor of the whole sequence in backward).
    assert segment_chunks(1, 8, 64, 64, 128, 4, torch.device("meta")) * 64 * 8 * 128 * 4 == DEVICE_SEGMENT_BYTES


def test_forward_only_segments_count_the_forwards_own_temporaries():
    """Without a backward to follow, a segment holds only the decayed queries and keys ``[B, n*C, H, Dk]``."""
    cpu = torch.device("cpu")
    n = segment_chunks(1, 3, 64, 256, 432, 4, cpu, forward_only=True)
    assert n == CPU_SEGMENT_BYTES // (3 * 64 * 256 * 4)  # 10 chunks: a 512-token prefill block is one segment
    assert n > segment_chunks(1, 3, 64, 256, 432, 4, cpu)
