"""glibc malloc settings for retnet's long-running processes (no-ops where glibc is absent).

Two patterns cost RSS or time with glibc's defaults:

- **Serving** allocates and frees state tensors of changing batch sizes from several threads. Freed memory
  stays mapped in many arenas (up to 8 per core); :func:`limit_arenas` and a periodic :func:`trim` return
  most of it (README, "Serving").
- **Training and benchmarks on the CPU** allocate the same large tensors every step. glibc maps every block
  of 32 MiB or more afresh (``mmap``) and returns freed memory at the top of the heap, so each step pays a
  page fault per 4 KiB page touched again, which makes long sequences slower than linear in T (README,
  "Retention speed and memory"). :func:`retain_freed_memory` serves large blocks from
  the heap and keeps freed memory for the next step, as the caching allocators of GPUs (or jemalloc /
  tcmalloc, which PyTorch's CPU tuning guide recommends) do; the process's RSS then stays at its peak.
  :func:`return_freed_memory` is the opposite choice, for the lowest peak memory: large blocks always mapped
  afresh and returned when freed (``retnet train --malloc return``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
INT_MAX = 2**31 - 1
DISABLE_ENV = "RETNET_GLIBC_DEFAULTS"  # set to 1 to leave glibc's defaults alone (e.g. to compare)


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        _ = lib.mallopt, lib.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return lib


_LIBC = _libc()
_SETTING: str | None = None  # what describe() reports once a setting took; None: glibc's defaults


def _enabled() -> bool:
    return _LIBC is not None and os.environ.get(DISABLE_ENV, "") in ("", "0")


def limit_arenas(arena_max: int = 2) -> bool:
    """Bound the number of malloc arenas; returns whether glibc took it."""
    return _enabled() and bool(_LIBC.mallopt(M_ARENA_MAX, arena_max))


def trim() -> None:
    """Return free heap memory to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _took(ok: bool, setting: str) -> bool:
    """Record the setting for :func:`describe` when glibc took it (else no setting is claimed)."""
    global _SETTING
    _SETTING = setting if ok else None
    return ok


def retain_freed_memory(max_heap_block: int = 1 << 30) -> bool:
    """Serve blocks up to ``max_heap_block`` bytes from the heap and never shrink it; returns whether glibc
    took both settings. For processes that repeat the same large allocations (training steps, benchmark
    passes); not for the server, whose memory should shrink when conversations end."""
    if not _enabled():
        return False
    mmap_ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, min(max_heap_block, INT_MAX)))
    trim_ok = bool(_LIBC.mallopt(M_TRIM_THRESHOLD, INT_MAX))
    return _took(
        mmap_ok and trim_ok,
        "glibc, large blocks from the heap, freed memory kept (retnet.runtime.malloc.retain_freed_memory)",
    )


def return_freed_memory(min_mmap_block: int = 1 << 20) -> bool:
    """Map every block of ``min_mmap_block`` bytes or more afresh and unmap it when freed, with this threshold
    fixed; returns whether glibc took both settings. By default glibc raises its threshold after the first large
    free, so later blocks up to 32 MiB come from the heap, and the holes they leave stay resident and get split
    by small allocations: a training step's peak RSS then exceeds its live tensors by a gigabyte or more. Here
    peak RSS follows the live tensors, at the cost of page faults on every large allocation (slower steps)."""
    if not _enabled():
        return False
    mmap_ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, min_mmap_block))
    trim_ok = bool(_LIBC.mallopt(M_TRIM_THRESHOLD, min_mmap_block))
    return _took(
        mmap_ok and trim_ok,
        f"glibc, blocks >= {min_mmap_block / 2**20:g} MiB mapped and returned when freed "
        "(retnet.runtime.malloc.return_freed_memory)",
    )


MALLOC_MODES = {"retain": retain_freed_memory, "return": return_freed_memory}


def configure(mode: str) -> bool:
    """Apply a named setting: ``retain`` (speed: large blocks reused) or ``return`` (memory: freed blocks
    returned at once); returns whether glibc took it."""
    if mode not in MALLOC_MODES:
        raise ValueError(f"malloc mode must be one of {sorted(MALLOC_MODES)}, got {mode!r}")
    return MALLOC_MODES[mode]()


def describe() -> str:
    """This process's setting, for benchmark reports."""
    if _LIBC is None:
        return "not glibc"
    return _SETTING or "glibc defaults"
