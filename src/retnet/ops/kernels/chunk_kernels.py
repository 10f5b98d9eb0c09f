"""Triton kernels for chunkwise retention: one fused forward kernel and a three-part backward kernel.

Each program owns one (batch, head, value slice) and walks the chunks of its sequence in order, keeping the
float32 state ``S [Dk, BV]`` in registers, so per-chunk states are never written to memory (the chunkwise
math of ``retnet/ops/chunkwise.py``; docs/retention.md, section 2). Per chunk of ``C`` rows, with ``b`` the inclusive
cumulative log decay inside the chunk, ``bC`` its total and ``D[i, j] = exp(b_i - b_j) [i >= j]``:

    O      = (Q K^T * D) V + exp(b) * (Q S)
    S_next = exp(bC) S + (K * exp(bC - b))^T V

The backward kernel is compiled in three parts (``PART``, three launches): one walks forward over chunks
(rebuilding ``S``) for ``dQ``; two walk backward carrying ``dS`` (the gradient of the state after the
chunk), one for ``dK`` and one for ``dV``. dQ and dK programs own a key slice of the state with all its
value columns, dV programs a value slice with all key rows, so each gradient is complete in one program
(no partial sums). Both backward parts rebuild ``dS`` (one extra product per chunk) so that far fewer
tiles are live at once: with everything in one program the compiler spilled registers heavily (register and
spill figures: ``retnet bench kernel-resources``, docs/benchmarks/kernel_resources.md):

    dQ  = scale ((dO V^T * D) K + exp(b) * (dO S^T))
    dK  = scale (dO V^T * D)^T Q + exp(bC - b) * (V dS^T)
    dV  = scale (Q K^T * D)^T dO + exp(bC - b) * (K dS)
    dS <- exp(bC) dS + scale (Q * exp(b))^T dO

Matrix products run on the tensor cores in the input dtype with float32 accumulation; decays and states
stay float32. Fixed decay without a mask uses the exact in-chunk decay ``(i - j) g``, computed once per
program; gated decay or a padding mask use a cumulative sum.
The padding mask zeroes ``k``, the decay and ``o`` at padded steps, so the state stays frozen there.

Register budget (what decides speed on Hopper): ``q`` and ``k`` tiles are only ever operands of ``tl.dot``
(masks and decays scale ``v``, ``dO`` or the small ``C x C`` matrices instead), so the software pipeliner
can stage them in shared memory; accumulations use ``acc=``; decays use ``exp2`` in log2 units.
"""

from __future__ import annotations

import triton
import triton.language as tl

from retnet.ops.kernels.config import tuned

# On a GPU the chunk length is tuned too: 64 rows fill a Hopper wgmma tile, 32 halves the live [C, D] tiles
# and so the register spills at D = 256 (docs/benchmarks/kernel_resources.md). Results do not depend on C.
# Under the interpreter the caller passes C and the launch options itself.
_CONFIGS = [
    triton.Config({"C": c}, num_warps=w, num_stages=s) for c in (64, 32) for w, s in ((8, 1), (4, 1), (8, 2), (4, 2))
]
_KEY = ["DK", "DV", "BK", "BV", "GATED", "HAS_MASK"]


@triton.jit
def _tile_mask(mt, mcol, FULL_COLS: tl.constexpr):
    """Load/store mask of a ``[C, BD]`` tile: rows in range, and columns only when the tile overhangs ``D``."""
    if FULL_COLS:
        return mt[:, None]
    else:
        return mt[:, None] & mcol[None, :]


@triton.jit
def _chunk_decay(g, m, i_b, i_h, t, mt, T, H: tl.constexpr, g_h, fixed_b, fixed_D, causal, GATED: tl.constexpr,
                 HAS_MASK: tl.constexpr, EXACT: tl.constexpr):  # fmt: skip
    """Per-chunk decay factors in log2 units, padding mask folded in.

    Returns ``eb = exp(b) m`` (rows), ``w = exp(bC - b) m`` (rows), ``D[i, j] = exp(b_i - b_j) [i >= j] m_i m_j``
    and ``exp(bC)``, where ``m`` is the mask row (1 on valid steps, 0 on padding and past ``T``).
    """
    if HAS_MASK:
        mm = tl.load(m + i_b.to(tl.int64) * T + t, mask=mt, other=0).to(tl.float32)
    else:
        mm = tl.where(mt, 1.0, 0.0)
    if GATED:
        gv = tl.load(g + (i_b.to(tl.int64) * T + t) * H + i_h, mask=mt, other=0.0).to(tl.float32) * 1.4426950408889634
    else:
        gv = tl.where(mt, g_h, 0.0)
    if HAS_MASK:
        gv = gv * mm
    if EXACT:
        b = fixed_b
        D = fixed_D
    else:
        b = tl.cumsum(gv, 0)
        D = tl.exp2(tl.where(causal, b[:, None] - b[None, :], float("-inf"))) * (mm[:, None] * mm[None, :])
    bC = tl.sum(gv, 0)
    # exp(bC - b) on valid rows only: past the end, b can exceed bC (fixed decay) and the exp could overflow.
    w = tl.exp2(tl.where(mt, bC - b, float("-inf"))) * mm
    eb = tl.exp2(b) * mm
    return eb, tl.exp2(bC), D, w


@triton.jit
def _chunk_fwd_kernel(
    q, k, v, g, m, s0, o, sT, scale, T,
    H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
    GATED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_S0: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    EXACT: tl.constexpr = not GATED and not HAS_MASK
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    # 64-bit offsets stay scalar (added to the base pointers); per-element offsets are int32.
    base_k = i_b.to(tl.int64) * T * H * DK + i_h * DK
    base_v = i_b.to(tl.int64) * T * H * DV + i_h * DV
    q += base_k
    k += base_k
    v += base_v
    o += base_v
    causal = offs_c[:, None] >= offs_c[None, :]
    off_state = i_bh.to(tl.int64) * DK * DV
    s0 += off_state
    sT += off_state
    p_state = offs_k[:, None] * DV + offs_v[None, :]
    m_state = mk[:, None] & mv[None, :]
    if HAS_S0:
        S = tl.load(s0 + p_state, mask=m_state, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    g_h = 0.0
    if not GATED:
        g_h = tl.load(g + i_h).to(tl.float32) * 1.4426950408889634
    fixed_b = (offs_c + 1).to(tl.float32) * g_h
    fixed_D = tl.exp2(tl.where(causal, (offs_c[:, None] - offs_c[None, :]).to(tl.float32) * g_h, float("-inf")))

    for c in range(0, tl.cdiv(T, C)):
        t = c * C + offs_c
        mt = t < T
        p_k = t[:, None] * (H * DK) + offs_k[None, :]  # int32 offsets from the head's base
        p_v = t[:, None] * (H * DV) + offs_v[None, :]
        m_v = _tile_mask(mt, mv, DV % BV == 0)
        bq = tl.load(q + p_k, mask=_tile_mask(mt, mk, BK == DK), other=0.0)
        bk = tl.load(k + p_k, mask=_tile_mask(mt, mk, BK == DK), other=0.0)
        bv = tl.load(v + p_v, mask=m_v, other=0.0)
        eb, eC, D, w = _chunk_decay(g, m, i_b, i_h, t, mt, T, H, g_h, fixed_b, fixed_D, causal, GATED, HAS_MASK, EXACT)
        bo = tl.dot(bq, S.to(bq.dtype), input_precision=PREC) * (eb * scale)[:, None]
        s = tl.dot(bq, tl.trans(bk), input_precision=PREC) * (D * scale)
        bo = tl.dot(s.to(bv.dtype), bv, acc=bo, input_precision=PREC)
        tl.store(o + p_v, bo.to(o.dtype.element_ty), mask=m_v)
        S = tl.dot(tl.trans(bk), (bv * w[:, None]).to(bv.dtype), acc=S * eC, input_precision=PREC)
    tl.store(sT + p_state, S, mask=m_state)


@triton.jit
def _chunk_bwd_kernel(
    q, k, v, g, m, s0, do, dsT, dq, dk, dv, ds0, scale, T,
    H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
    GATED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_S0: tl.constexpr, HAS_DST: tl.constexpr,
    STORE_DS0: tl.constexpr, PREC: tl.constexpr, PART: tl.constexpr,
):  # fmt: skip
    i_s = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    EXACT: tl.constexpr = not GATED and not HAS_MASK
    offs_c = tl.arange(0, C)
    # dq and dk programs own a key slice and every value column (so dq, dk need no sum over slices); dv
    # programs own a value slice and every key row (as the forward).
    if PART == 2:
        offs_k = tl.arange(0, BK)
        offs_v = i_s * BV + tl.arange(0, BV)
    else:
        offs_k = i_s * BK + tl.arange(0, BK)
        offs_v = tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    # 64-bit offsets stay scalar (added to the base pointers); per-element offsets are int32.
    base_k = i_b.to(tl.int64) * T * H * DK + i_h * DK
    base_v = i_b.to(tl.int64) * T * H * DV + i_h * DV
    q += base_k
    k += base_k
    v += base_v
    do += base_v
    dv += base_v
    dq += base_k
    dk += base_k
    off_state = i_bh.to(tl.int64) * DK * DV
    s0 += off_state
    dsT += off_state
    ds0 += off_state
    causal = offs_c[:, None] >= offs_c[None, :]
    p_state = offs_k[:, None] * DV + offs_v[None, :]
    m_state = mk[:, None] & mv[None, :]
    g_h = 0.0
    if not GATED:
        g_h = tl.load(g + i_h).to(tl.float32) * 1.4426950408889634
    fixed_b = (offs_c + 1).to(tl.float32) * g_h
    fixed_D = tl.exp2(tl.where(causal, (offs_c[:, None] - offs_c[None, :]).to(tl.float32) * g_h, float("-inf")))
    NC = tl.cdiv(T, C)

    if PART == 0:
        # dq: forward over chunks, rebuilding the state entering each chunk.
        if HAS_S0:
            S = tl.load(s0 + p_state, mask=m_state, other=0.0).to(tl.float32)
        else:
            S = tl.zeros([BK, BV], dtype=tl.float32)
        for c in range(0, NC):
            t = c * C + offs_c
            mt = t < T
            p_k = t[:, None] * (H * DK) + offs_k[None, :]  # int32 offsets from the head's base
            p_v = t[:, None] * (H * DV) + offs_v[None, :]
            m_k = _tile_mask(mt, mk, DK % BK == 0)
            m_v = _tile_mask(mt, mv, DV % BV == 0)
            bk = tl.load(k + p_k, mask=m_k, other=0.0)
            bv = tl.load(v + p_v, mask=m_v, other=0.0)
            bdo = tl.load(do + p_v, mask=m_v, other=0.0)
            eb, eC, D, w = _chunk_decay(
                g, m, i_b, i_h, t, mt, T, H, g_h, fixed_b, fixed_D, causal, GATED, HAS_MASK, EXACT
            )
            # dq = (dO V^T * D) K + exp(b) (dO S^T)
            bdq = tl.dot(bdo, tl.trans(S.to(bdo.dtype)), input_precision=PREC) * (eb * scale)[:, None]
            dp = tl.dot(bdo, tl.trans(bv), input_precision=PREC) * (D * scale)
            bdq = tl.dot(dp.to(bk.dtype), bk, acc=bdq, input_precision=PREC)
            tl.store(dq + p_k, bdq.to(dq.dtype.element_ty), mask=m_k)
            S = tl.dot(tl.trans(bk), (bv * w[:, None]).to(bv.dtype), acc=S * eC, input_precision=PREC)
    else:
        # dk (part 1) or dv (part 2): backward over chunks carrying dS, the gradient of the state after the
        # chunk. Each part rebuilds dS itself (one extra product per chunk) to halve the live tiles.
        if HAS_DST:
            dS = tl.load(dsT + p_state, mask=m_state, other=0.0).to(tl.float32)
        else:
            dS = tl.zeros([BK, BV], dtype=tl.float32)
        for i in range(0, NC):
            c = NC - 1 - i
            t = c * C + offs_c
            mt = t < T
            p_k = t[:, None] * (H * DK) + offs_k[None, :]
            p_v = t[:, None] * (H * DV) + offs_v[None, :]
            m_k = _tile_mask(mt, mk, DK % BK == 0)
            m_v = _tile_mask(mt, mv, DV % BV == 0)
            bq = tl.load(q + p_k, mask=m_k, other=0.0)
            bdo = tl.load(do + p_v, mask=m_v, other=0.0)
            eb, eC, D, w = _chunk_decay(
                g, m, i_b, i_h, t, mt, T, H, g_h, fixed_b, fixed_D, causal, GATED, HAS_MASK, EXACT
            )
            if PART == 1:
                # dk = (dO V^T * D)^T Q + exp(bC - b) (V dS^T)
                bv = tl.load(v + p_v, mask=m_v, other=0.0)
                bdk = tl.dot(bv, tl.trans(dS.to(bv.dtype)), input_precision=PREC) * w[:, None]
                dp = tl.dot(bdo, tl.trans(bv), input_precision=PREC) * (D * scale)
                bdk = tl.dot(tl.trans(dp.to(bq.dtype)), bq, acc=bdk, input_precision=PREC)
                tl.store(dk + p_k, bdk.to(dk.dtype.element_ty), mask=m_k)
            else:
                # dv = (Q K^T * D)^T dO + exp(bC - b) (K dS)
                bk = tl.load(k + p_k, mask=m_k, other=0.0)
                bdv = tl.dot(bk, dS.to(bk.dtype), input_precision=PREC) * w[:, None]
                s = tl.dot(bq, tl.trans(bk), input_precision=PREC) * (D * scale)
                bdv = tl.dot(tl.trans(s.to(bdo.dtype)), bdo, acc=bdv, input_precision=PREC)
                tl.store(dv + p_v, bdv.to(dv.dtype.element_ty), mask=m_v)
            # dS <- exp(bC) dS + Q^T (dO * exp(b) * scale)
            dS = tl.dot(tl.trans(bq), (bdo * (eb * scale)[:, None]).to(bdo.dtype), acc=dS * eC, input_precision=PREC)
        if STORE_DS0:
            if PART == 2:
                tl.store(ds0 + p_state, dS, mask=m_state)


chunk_fwd_kernel = tuned(_chunk_fwd_kernel, _CONFIGS, _KEY)
chunk_bwd_kernel = tuned(_chunk_bwd_kernel, _CONFIGS, [*_KEY, "PART"])
CONFIGS = _CONFIGS
