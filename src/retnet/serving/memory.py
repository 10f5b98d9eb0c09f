"""Keep a long-running server's resident memory flat under glibc.

The engine allocates and frees state tensors of changing batch sizes while request threads load and save
states. With glibc's defaults (up to 8 arenas per core, freed pages kept in each) freed memory stays mapped
in many arenas; two arenas and a periodic ``malloc_trim`` return most of it (an in-process engine run under
load: 427-434 MiB with the defaults, 295-325 MiB with these, at no cost in speed). Forcing large blocks to
mmap also bounds RSS but doubled the decode step time. No-ops where glibc is absent. (The larger RSS creep of
the HTTP server was a reference cycle per request, fixed in ``engine.Sequence.cancel``.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8


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


def tune_malloc(arena_max: int = 2) -> bool:
    """Bound the number of malloc arenas; returns whether glibc took it."""
    return _LIBC is not None and bool(_LIBC.mallopt(M_ARENA_MAX, arena_max))


def trim() -> None:
    """Return free heap memory to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
