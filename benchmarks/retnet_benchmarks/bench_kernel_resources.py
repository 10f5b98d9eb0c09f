"""``retnet bench kernel-resources``: compile the retention kernels for a GPU target without a GPU.

Triton compiles to a cubin with its bundled ``ptxas``; ``cuobjdump --dump-resource-usage`` then gives the
registers per thread and the stack (spilled registers) per thread of each kernel variant. Spills are what
made the first single-program backward slow on paper; this report tracks them. No timings.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from retnet.cli.errors import CLIError
from retnet_benchmarks.options import add_out_dir
from retnet_benchmarks.report import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("kernel-resources", help="registers and spills of the retention kernels (no GPU needed)")
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for H100 (default)")
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256], help="head dims (Dk = Dv)")
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--chunks", type=int, nargs="+", default=[64, 32], help="chunk lengths (the autotuner's choices)")
    add_out_dir(p, "--out")
    p.set_defaults(func=run)


def _compile(fn, types: dict[str, str], const: dict[str, Any], arch: int, num_warps: int, num_stages: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    sig = {a: types.get(a, "constexpr") for a in names}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in const.items()})
    return triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps, num_stages=num_stages)
    )


def _usage(cubin: bytes) -> dict[str, int]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    if not m:
        raise CLIError(f"could not read the resource usage from cuobjdump: {out[:200]!r}")
    return {"registers": int(m.group(1)), "stack_bytes": int(m.group(2))}


def run(args: argparse.Namespace) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise CLIError("TRITON_INTERPRET=1 is set: unset it to compile for a GPU target")
    try:
        from retnet.ops.kernels.chunk_kernels import _chunk_bwd_kernel, _chunk_fwd_kernel
        from retnet.ops.kernels.config import chunk_slice, pow2, recurrent_block_v
        from retnet.ops.kernels.recurrent_kernels import recurrent_fwd_kernel
    except ImportError as exc:
        raise CLIError("this command needs Triton: pip install 'retnet[kernels]'") from exc
    bf, f32 = "*bf16", "*fp32"
    fwd_types = dict(q=bf, k=bf, v=bf, g=f32, m=f32, s0=f32, o=bf, sT=f32, scale="fp32", T="i32")
    bwd_types = dict(fwd_types, do=bf, dsT=f32, dq=bf, dk=bf, dv=bf, ds0=f32)
    rows = []
    for D in args.dims:
        sl = chunk_slice(D, D)
        variants = []
        for C in args.chunks:
            base = dict(H=32, DK=D, DV=D, BK=pow2(D), BV=sl, C=C, GATED=False, HAS_MASK=False, HAS_S0=True, PREC="tf32")
            variants.append(("chunk_fwd", _chunk_fwd_kernel, fwd_types, base))
            for part, name in enumerate(("chunk_bwd_dq", "chunk_bwd_dk", "chunk_bwd_dv")):
                tiles = dict(BK=sl, BV=pow2(D)) if part < 2 else {}
                const = dict(base, HAS_DST=True, STORE_DS0=True, PART=part, **tiles)
                variants.append((name, _chunk_bwd_kernel, bwd_types, const))
        for name, fn, types, const in variants:
            for w in args.warps:
                k = _compile(fn, types, const, args.arch, w, 1)
                tile = f"{const['BK']}x{const['BV']}"
                row = {"kernel": name, "D": D, "chunk": const["C"], "state_tile": tile, "warps": w}
                rows.append({**row, **_usage(k.asm["cubin"])})
                print(rows[-1])
        rbv = recurrent_block_v(D, D)
        rconst = dict(H=32, DK=D, DV=D, BK=D, BV=rbv, GATED=False, HAS_MASK=False, HAS_S0=True)
        k = _compile(recurrent_fwd_kernel, fwd_types, rconst, args.arch, 4, 1)
        tile = f"{pow2(D)}x{rbv}"
        row = {"kernel": "recurrent", "D": D, "chunk": None, "state_tile": tile, "warps": 4}
        rows.append({**row, **_usage(k.asm["cubin"])})
        print(rows[-1])
    write_report(
        "kernel_resources",
        title=f"Retention kernels compiled for sm_{args.arch}: registers and spills per thread",
        rows=rows,
        out_dir=args.out,
        notes="Compiled with Triton's bundled ptxas (bf16 inputs, fixed decay, num_stages 1); "
        "`stack_bytes` > 0 means registers spilled to local memory. No GPU involved: no timings.",
    )
    return 0
