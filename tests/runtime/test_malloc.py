"""glibc settings: retained memory spares repeated large allocations their page faults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from retnet.runtime import malloc

PROBE = """
import ctypes, resource, sys
from retnet.runtime.malloc import retain_freed_memory, describe
took = retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20

def cycle():  # what a training step does with a large activation: allocate, write, free
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)

cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, describe(), sep="|")
"""


def _probe(**env: str) -> tuple[bool, int, str]:
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    full_env = {k: v for k, v in os.environ.items() if k != malloc.DISABLE_ENV}
    full_env.update(PYTHONPATH=src, **env)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full_env, check=True)
    took, faults, described = out.stdout.strip().split("|")
    return took == "True", int(faults), described


def test_retained_memory_is_reused_without_page_faults():
    assert malloc._LIBC is not None, "these tests run on glibc (Linux), as CI does"
    pages = 5 * (64 << 20) // 4096
    took, faults, described = _probe()
    assert took and faults < pages // 20, faults  # reused: (almost) no page is faulted in again
    assert described.startswith("glibc, large blocks from the heap")
    took, faults, described = _probe(**{malloc.DISABLE_ENV: "1"})
    assert not took and faults > pages // 2, faults  # glibc defaults: every cycle maps fresh pages
    assert described == "glibc defaults"


def test_settings_are_noops_without_glibc(monkeypatch):
    monkeypatch.setattr(malloc, "_LIBC", None)
    assert malloc.retain_freed_memory() is False and malloc.limit_arenas() is False
    malloc.trim()
    assert malloc.describe() == "not glibc"


RETURN_PROBE = """
import ctypes, os, sys
from retnet.runtime.malloc import configure, describe
took = configure(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 << 20  # an activation of a small model at 8K tokens

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def cycle():  # allocate and touch a large block, then a small one above it (as autograd does), free the large one
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    small = libc.malloc(4096)
    libc.free(p)
    return small

before = rss()
for _ in range(4):
    cycle()
print(took, rss() - before, describe(), sep="|")
"""


def _return_probe(mode: str) -> tuple[bool, int, str]:
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = {k: v for k, v in os.environ.items() if k != malloc.DISABLE_ENV}
    env.update(PYTHONPATH=src)
    cmd = [sys.executable, "-c", RETURN_PROBE, mode]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    took, grown, described = out.stdout.strip().split("|")
    return took == "True", int(grown), described


def test_return_mode_gives_freed_blocks_back_and_retain_keeps_them():
    took, grown, described = _return_probe("return")
    assert took and grown < (4 << 20), grown  # each freed 16 MiB block went back to the system
    assert described.startswith("glibc, blocks >= 1 MiB mapped and returned")
    took, grown, _ = _return_probe("retain")
    assert took and grown >= (12 << 20), grown  # kept resident below the small blocks (holes)


def test_configure_names_the_modes():
    with pytest.raises(ValueError, match="malloc mode must be one of \\['retain', 'return'\\], got 'fast'"):
        malloc.configure("fast")
