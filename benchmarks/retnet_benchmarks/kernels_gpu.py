"""GPU measurements behind ``retnet bench kernels``: timings side by side, bf16 correctness, decode bandwidth.

Everything here needs a CUDA device; :func:`require_cuda` raises a one-line ``CLIError`` otherwise.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from retnet.cli.errors import CLIError
from retnet.ops import gated_log_decay, official_log_decay, retention
from retnet_benchmarks.measure import pick_device

# Peak HBM bandwidth by product name (vendor data sheets), bytes/s; the measured copy bandwidth is also reported.
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5 (H100 80GB HBM3)
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
)


def require_cuda() -> None:
    """Refuse clearly when there is no GPU (the kernels are CPU-tested through the Triton interpreter)."""
    pick_device("cuda")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise CLIError("TRITON_INTERPRET=1 is set: unset it, timings through the Triton interpreter are meaningless")
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise CLIError("this benchmark needs Triton: pip install 'retnet[kernels]'") from exc


def do_bench(fn: Callable[[], Any], grad_to_none: list[torch.Tensor] | None = None) -> float:
    """Median milliseconds of ``fn`` from ``triton.testing.do_bench``."""
    from triton.testing import do_bench as _do_bench

    return float(_do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))


def load_fla() -> Callable | None:
    """fla's ``chunk_retention`` (package ``fla-core``), called in the ``[B, T, H, D]`` layout, or ``None``."""
    try:
        from fla.ops.retention import chunk_retention as fla_chunk_retention
    except ImportError:
        return None
    kwargs = {"head_first": False} if "head_first" in inspect.signature(fla_chunk_retention).parameters else {}

    def run(q, k, v, scale):
        return fla_chunk_retention(q, k, v, scale=scale, **kwargs)[0]

    return run


def _inputs(B: int, T: int, H: int, D: int, requires_grad: bool) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [
        torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_(requires_grad)
        for _ in range(3)
    ]


def time_methods(B: int, H: int, D: int, T: int, methods: list[str], fla: Callable | None) -> list[dict[str, Any]]:
    """Forward and forward+backward median times (ms) of each method at one shape, bf16."""
    from retnet.ops.kernels import chunk_retention

    scale = D**-0.5
    g = official_log_decay(H, device="cuda")
    rows = []
    for name in methods:
        if name == "fla" and fla is None:
            continue
        if name == "ours":

            def f(q, k, v):
                return chunk_retention(q, k, v, g, scale=scale)[0]

        elif name == "fla":

            def f(q, k, v):
                return fla(q, k, v, scale)

        else:  # SDPA (FlashAttention backend for bf16), [B, H, T, D] views

            def f(q, k, v):
                return F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
                ).transpose(1, 2)

        row: dict[str, Any] = {"method": name, "D": D, "T": T}
        try:
            row.update(_time_one(f, B, T, H, D))
        except torch.cuda.OutOfMemoryError:
            row["note"] = "out of memory"
        torch.cuda.empty_cache()
        rows.append(row)
    return rows


def _time_one(f: Callable, B: int, T: int, H: int, D: int) -> dict[str, float]:
    q, k, v = _inputs(B, T, H, D, requires_grad=False)
    with torch.no_grad():
        fwd = do_bench(lambda: f(q, k, v))
    q, k, v = _inputs(B, T, H, D, requires_grad=True)
    do = torch.randn_like(v)
    return {"fwd_ms": fwd, "fwdbwd_ms": do_bench(lambda: f(q, k, v).backward(do), grad_to_none=[q, k, v])}


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


def check_case(B: int, T: int, H: int, D: int, gated: bool, pad: int) -> dict[str, Any]:
    """bf16 kernels vs the float32 PyTorch chunkwise form on the same bf16-rounded inputs: relative RMS errors."""
    from retnet.ops.kernels import chunk_retention

    gen = torch.Generator(device="cuda").manual_seed(T + D)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=gen).bfloat16() for _ in range(3))
    k = (k.float() * D**-0.5).bfloat16()
    if gated:
        g = gated_log_decay(torch.randn(B, T, H, device="cuda", generator=gen) + 4.0)
    else:
        g = official_log_decay(H, device="cuda")
    s0 = torch.randn(B, H, D, D, device="cuda", generator=gen) * 0.1
    mask = torch.ones(B, T, device="cuda", dtype=torch.long)
    mask[0, :pad] = 0
    do = torch.randn(B, T, H, D, device="cuda", generator=gen).bfloat16()
    dsT = torch.randn(B, H, D, D, device="cuda", generator=gen) * 0.1

    def run(fn, cast):
        leaves = [t.detach().to(cast).requires_grad_() for t in (q, k, v)]
        lg = g.detach().clone().requires_grad_(gated)
        ls = s0.detach().clone().requires_grad_()
        o, sT = fn(*leaves, lg, ls)
        ((o.float() * do.float()).sum() + (sT * dsT).sum()).backward()
        grads = {"dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad, "ds0": ls.grad}
        if gated:
            grads["dlog_decay"] = lg.grad
        return {"o": o.detach(), "final_state": sT.detach(), **grads}

    kw = dict(output_final_state=True, attention_mask=mask)
    ours = run(lambda q, k, v, g, s: chunk_retention(q, k, v, g, initial_state=s, **kw), torch.bfloat16)
    kw_ref = dict(kw, mode="chunkwise", backend="torch")  # the PyTorch form, not the kernels under test
    ref = run(lambda q, k, v, g, s: retention(q, k, v, g, initial_state=s, **kw_ref), torch.float32)
    errs = {name: _rel_rms(ours[name], ref[name]) for name in ref}
    return {"B": B, "T": T, "H": H, "D": D, "gated": gated, "left_pad": pad, **errs}


def check_decode(B: int, H: int, D: int, steps: int = 16) -> dict[str, Any]:
    """Decoding steps with the in-place recurrent kernel (bf16) vs the float32 recurrent form."""
    from retnet.ops.kernels import fused_recurrent_step

    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(B, steps, H, D, device="cuda", generator=gen).bfloat16() for _ in range(3))
    g = official_log_decay(H, device="cuda")
    s0 = torch.randn(B, H, D, D, device="cuda", generator=gen)
    state = s0.clone()
    with torch.no_grad():
        outs = [
            fused_recurrent_step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g, state)[0] for t in range(steps)
        ]
        o_ref, s_ref = retention(
            q.float(),
            k.float(),
            v.float(),
            g,
            mode="recurrent",
            backend="torch",
            initial_state=s0,
            output_final_state=True,
        )
    o = torch.cat(outs, 1)
    return {"B": B, "T": steps, "H": H, "D": D, "gated": False, "left_pad": 0, "o": _rel_rms(o, o_ref),
            "final_state": _rel_rms(state, s_ref)}  # fmt: skip


def peak_bandwidth() -> tuple[float | None, float]:
    """(data-sheet peak for this GPU or None, measured device-to-device copy bandwidth), bytes/s."""
    name = torch.cuda.get_device_name(0)
    peak = next((bw for key, bw in PEAK_BANDWIDTH if key in name), None)
    n = 256 * 2**20  # 1 GiB of float32
    ms = _copy_ms(n)
    torch.cuda.empty_cache()
    return peak, 2 * n * 4 / (ms * 1e-3)


def _copy_ms(n: int) -> float:
    x = torch.empty(n, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    return do_bench(lambda: y.copy_(x))


def time_decode(B: int, H: int, D: int) -> dict[str, Any]:
    """One decoding step for ``B`` states: time and the fraction of the bandwidth floor it reaches."""
    from retnet.ops.kernels import fused_recurrent_step

    q, k, v = (torch.randn(B, 1, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    g = official_log_decay(H, device="cuda")
    state = torch.zeros(B, H, D, D, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        ms = do_bench(lambda: fused_recurrent_step(q, k, v, g, state))
    moved = 2 * state.numel() * 4 + 4 * B * H * D * 2  # state read + written, q/k/v read, o written
    peak, copy_bw = peak_bandwidth()
    row = {"B": B, "H": H, "D": D, "decode_ms": ms, "bytes": moved, "achieved_GBps": moved / (ms * 1e-3) / 1e9}
    row["copy_GBps"] = copy_bw / 1e9
    row["frac_of_copy_bw"] = row["achieved_GBps"] * 1e9 / copy_bw
    if peak is not None:
        row["peak_GBps"] = peak / 1e9
        row["frac_of_peak_bw"] = row["achieved_GBps"] * 1e9 / peak
    return row


def summarize(rows: list[dict[str, Any]], decode: dict[str, Any] | None) -> dict[str, Any]:
    """Headline ratios and the issue's goals from the timing rows (pure function: tested on CPU)."""

    def t(method: str, D: int, T: int, key: str = "fwdbwd_ms") -> float | None:
        for r in rows:
            if r["method"] == method and r["D"] == D and r["T"] == T and key in r:
                return r[key]
        return None

    out: dict[str, Any] = {}
    ours8k = t("ours", 128, 8192)
    if ours8k is not None:
        fla8k, sdpa8k = t("fla", 128, 8192), t("sdpa", 128, 8192)
        if fla8k is not None:
            out["fla / ours, fwd+bwd, D=128, T=8K (goal >= 1.2)"] = fla8k / ours8k
        if sdpa8k is not None:
            out["SDPA / ours, fwd+bwd, D=128, T=8K (goal >= 3)"] = sdpa8k / ours8k
    ratios = [
        t("ours", 256, r["T"]) / r["fwdbwd_ms"]
        for r in rows
        if r["method"] == "ours" and r["D"] == 128 and "fwdbwd_ms" in r and t("ours", 256, r["T"]) is not None
    ]
    if ratios:
        out["max over T of ours D=256 / D=128, fwd+bwd (goal <= 2.2)"] = max(ratios)
    if decode is not None:
        key = "frac_of_peak_bw" if "frac_of_peak_bw" in decode else "frac_of_copy_bw"
        out[f"decode, B={decode['B']} states: {key} (goal >= 0.7)"] = decode[key]
    return out
