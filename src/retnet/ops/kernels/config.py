"""Launch settings shared by the retention kernels: interpreter detection, tile sizes, autotune wrapping.

Under ``TRITON_INTERPRET=1`` (CPU CI) the autotuner cannot time configs, so every kernel runs with one
fixed config there; on a GPU the ``num_warps`` / ``num_stages`` choices are autotuned per shape.
"""

from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Chunk length of the chunkwise kernels on a GPU: 64 rows fill a Hopper wgmma tile (M = 64).
GPU_CHUNK = 64
# Largest fp32 state tile ([BK, BV]) one program keeps in registers: 128 x 64. Larger tiles made ptxas spill
# (sm_90, bf16: e.g. the forward at Dk = Dv = 128 with BV = 128 spilled ~600 B/thread, BV = 64 ~56 B).
MAX_STATE_TILE = 128 * 64


def pow2(n: int, lo: int = 16) -> int:
    """The next power of two >= max(n, lo) (``tl.dot`` needs every tile dimension >= 16)."""
    return max(lo, triton.next_power_of_2(n))


def chunk_block_v(dk: int, dv: int, block_v: int | None = None) -> int:
    """Width of the value slice one chunkwise program owns (it always owns the whole key dimension).

    The full ``Dk x BV`` float32 state stays in registers, so ``BV`` shrinks as ``Dk`` grows: 64 for
    Dk = 128, 32 for Dk = 256. An explicit ``block_v`` (a power of two >= 16) overrides it, for tuning.
    """
    bk = pow2(dk)
    if block_v is not None:
        if block_v < 16 or block_v & (block_v - 1):
            raise ValueError(f"block_v must be a power of two >= 16, got {block_v}")
        return min(block_v, pow2(dv))
    return max(16, min(pow2(dv), MAX_STATE_TILE // bk, 128))


def recurrent_block_v(dk: int, dv: int) -> int:
    """Value slice per program of the recurrent kernel: a 4096-element state tile (bandwidth-bound)."""
    return max(16, min(pow2(dv), 4096 // pow2(dk)))


def tuned(kernel, configs: list[triton.Config], key: list[str]):
    """``kernel`` autotuned over ``configs`` on a GPU; the first config, fixed, under the interpreter."""
    if INTERPRET:
        return kernel
    return triton.autotune(configs=configs, key=key)(kernel)


def fixed_launch_options(configs: list[triton.Config]) -> dict:
    """Launch keywords (num_warps, num_stages) to pass explicitly when a kernel is not autotuned."""
    if not INTERPRET:
        return {}
    c = configs[0]
    return {"num_warps": c.num_warps, "num_stages": c.num_stages}
