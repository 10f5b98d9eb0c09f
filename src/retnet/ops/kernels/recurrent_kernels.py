"""Triton kernel for recurrent retention: decoding steps and short prompts, forward only.

Each program owns one (batch, head, value slice) of the float32 state ``S [Dk, BV]``, loads it once, runs
``S = exp(g_t) S + k_t^T v_t``, ``o_t = scale q_t S`` for every step in registers and writes it back once.
The final state may alias the initial one (in-place decoding): each program reads and writes only its own
slice, so the update is race-free. A decoding step is memory-bound: its floor is reading and writing the
state once.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def recurrent_fwd_kernel(
    q, k, v, g, m, s0, o, sT, scale, T,
    H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_S0: tl.constexpr,
):  # fmt: skip
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    p_state = i_bh.to(tl.int64) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    m_state = mk[:, None] & mv[None, :]
    if HAS_S0:
        S = tl.load(s0 + p_state, mask=m_state, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    g_h = 0.0
    if not GATED:
        g_h = tl.load(g + i_h).to(tl.float32)
    for t in range(0, T):
        row = i_b.to(tl.int64) * T + t
        p_k = row * H * DK + i_h * DK + offs_k
        p_v = row * H * DV + i_h * DV + offs_v
        bq = tl.load(q + p_k, mask=mk, other=0.0).to(tl.float32) * scale
        bk = tl.load(k + p_k, mask=mk, other=0.0).to(tl.float32)
        bv = tl.load(v + p_v, mask=mv, other=0.0).to(tl.float32)
        if GATED:
            gt = tl.load(g + row * H + i_h).to(tl.float32)
        else:
            gt = g_h
        if HAS_MASK:
            mm = tl.load(m + row).to(tl.float32)
            bk = bk * mm
            gt = gt * mm
        S = S * tl.exp(gt) + bk[:, None] * bv[None, :]
        bo = tl.sum(S * bq[:, None], 0)
        if HAS_MASK:
            bo = bo * mm
        tl.store(o + p_v, bo.to(o.dtype.element_ty), mask=mv)
    tl.store(sT + p_state, S, mask=m_state)
