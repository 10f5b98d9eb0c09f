"""Launch settings shared by the retention kernels: interpreter detection, tile sizes, autotune wrapping.

Under ``TRITON_INTERPRET=1`` (CPU CI) the autotuner cannot time configs, so every kernel runs with one
fixed config there; on a GPU the ``num_warps`` / ``num_stages`` choices are autotuned per shape.
"""

from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Largest fp32 state tile ([BK, BV]) one program keeps in registers: 128 x 64. Larger tiles spill registers
# to local memory on sm_90 (docs/benchmarks/kernel_resources.md).
MAX_STATE_TILE = 128 * 64


def pow2(n: int, lo: int = 16) -> int:
    """The next power of two >= max(n, lo) (``tl.dot`` needs every tile dimension >= 16)."""
    return max(lo, triton.next_power_of_2(n))


def chunk_slice(d_full: int, d_sliced: int, slice_size: int | None = None) -> int:
    """Width of the state slice a chunkwise program owns along ``d_sliced`` (it owns all of ``d_full``).

    The ``d_full x slice`` float32 state stays in registers, so the slice shrinks as ``d_full`` grows: 64 for
    128-wide heads, 32 for 256. The forward and dv programs slice the values (``d_full = Dk``), the dq and
    dk programs the keys (``d_full = Dv``). ``slice_size`` (a power of two >= 16) overrides it, for tuning.
    """
    if slice_size is not None:
        if slice_size < 16 or slice_size & (slice_size - 1):
            raise ValueError(f"slice_size must be a power of two >= 16, got {slice_size}")
        return min(slice_size, pow2(d_sliced))
    return max(16, min(pow2(d_sliced), MAX_STATE_TILE // pow2(d_full), 128))


def recurrent_block_v(dk: int, dv: int) -> int:
    """Value slice per program of the recurrent kernel: a 4096-element state tile (bandwidth-bound)."""
    return max(16, min(pow2(dv), 4096 // pow2(dk)))


def tuned(kernel, configs: list[triton.Config], key: list[str]):
    """``kernel`` autotuned over ``configs`` on a GPU; the first config, fixed, under the interpreter."""
    if INTERPRET:
        return kernel
    return triton.autotune(configs=configs, key=key)(kernel)


def fixed_launch_options(configs: list[triton.Config], **meta) -> dict:
    """Launch keywords for the untuned (interpreter) kernels: ``meta`` plus the first config's warps/stages.

    On a GPU the autotuner supplies all of them (passing any would conflict), so this returns ``{}``.
    """
    if not INTERPRET:
        return {}
    c = configs[0]
    return {**meta, "num_warps": c.num_warps, "num_stages": c.num_stages}
