"""``retnet bench kernel-resources`` compiles every retention kernel for sm_90 (Hopper) without a GPU.

This is CI's only check that the kernels build for a real GPU target (the other kernel tests use the
interpreter). It runs in a subprocess because ``tests/ops/kernels`` sets ``TRITON_INTERPRET=1`` in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_kernels_compile_for_hopper(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    cmd = [
        sys.executable,
        "-m",
        "retnet",
        "bench",
        "kernel-resources",
        "--dims",
        "16",
        "--warps",
        "4",
        "--chunks",
        "32",
    ]
    proc = subprocess.run([*cmd, "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "kernel_resources.json").read_text())["rows"]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"chunk_fwd", "chunk_bwd_dq", "chunk_bwd_dk", "chunk_bwd_dv", "recurrent"}
    assert all(0 < r["registers"] <= 255 and r["stack_bytes"] == 0 for r in rows)
