"""Chunkwise form (YOCO / flash-linear-attention convention) with its own backward. O(T C) time, O(T) memory.

Per chunk, with ``b`` the inclusive cumulative log decay inside the chunk and ``b_C`` its total:
``O = (Q K^T * exp(b_j - b_i)[i <= j]) V + (Q * exp(b)) S_prev`` and
``S_next = exp(b_C) S_prev + (K * exp(b_C - b))^T V``.
A short last chunk is zero-padded (zero log decay, zero keys), which changes neither outputs nor state.

The chunks are processed in segments of a few MiB per tensor: intra-chunk terms are batched over a
segment's chunks, only the cheap state hand-off loops over chunks. Segments bound every temporary, and on the
CPU they keep tensors out of glibc's fresh-``mmap`` size range (docs/benchmarks/retention.md).

For gradients, :class:`ChunkwiseRetention` saves only ``q, k, v``, the log decay and the state at each
segment's start; the backward walks the segments in reverse with a running state gradient and recomputes
each segment's chunk states and intra-chunk blocks (docs/retention.md, "The chunkwise backward").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Target size of the largest per-segment tensor: on the CPU below glibc's largest mmap threshold (32 MiB);
# on accelerators large enough that a segment keeps the device busy.
CPU_SEGMENT_BYTES = 2 * 2**20
DEVICE_SEGMENT_BYTES = 64 * 2**20


def segment_chunks(B: int, H: int, C: int, Dk: int, Dv: int, itemsize: int, device: torch.device) -> int:
    """Chunks per segment: keeps ``[B, H, n*C, max(C, Dk, Dv)]`` near the device's target size."""
    target = CPU_SEGMENT_BYTES if device.type == "cpu" else DEVICE_SEGMENT_BYTES
    per_chunk = B * H * C * max(C, Dk, Dv) * itemsize
    return max(1, target // per_chunk)


class _Plan:
    """Chunk length, segment length and the fixed-decay constants shared by forward and backward."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, g: torch.Tensor, chunk_size: int, per_segment: int | None):
        B, T, H, Dk = q.shape
        self.B, self.T, self.H, self.Dv = B, T, H, v.shape[-1]
        self.C = C = min(chunk_size, T)
        self.N = -(-T // C)
        if per_segment == -1:
            per_segment = segment_chunks(B, H, C, Dk, self.Dv, q.element_size(), q.device)
        self.S = self.N if per_segment is None else max(1, min(per_segment, self.N))
        idx = torch.arange(C, device=q.device)
        self.causal = idx[:, None] >= idx[None, :]
        self.fixed = g.dim() == 1
        self.decay_fixed = None
        if self.fixed:  # exact in-chunk decay (j - i) * g: no cancellation of cumulative sums
            dist = (idx[:, None] - idx[None, :]).to(g.dtype)
            L = torch.where(self.causal, dist * g[:, None, None], float("-inf"))  # [H, C, C]
            self.decay_fixed = torch.exp(L)[None, :, None]  # [1, H, 1, C, C]

    def segments(self) -> list[tuple[int, int]]:
        """``(start, stop)`` time steps of each segment (the last one may end in a short chunk)."""
        step = self.S * self.C
        return [(s, min(s + step, self.T)) for s in range(0, self.T, step)]

    def chunked(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``[B, T, H, D]`` steps ``start:stop`` as ``[B, H, n, C, D]`` chunks, zero-padded to whole chunks."""
        seg = x[:, start:stop]
        pad = -(stop - start) % self.C
        if pad:
            seg = F.pad(seg, (0, 0, 0, 0, 0, pad))
        n = seg.shape[1] // self.C
        # Contiguous once here: each matmul would otherwise copy the permuted view again.
        return seg.reshape(seg.shape[0], n, self.C, self.H, -1).permute(0, 3, 1, 2, 4).contiguous()

    def log_decay(self, g: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Per-step log decays ``[B|1, H, n, C]`` of steps ``start:stop``, padded steps 0."""
        pad = -(stop - start) % self.C
        if self.fixed:
            gt = g[None, None, :].expand(1, stop - start, self.H)
        else:
            gt = g[:, start:stop]
        if pad:
            gt = F.pad(gt, (0, 0, 0, pad))
        return gt.reshape(gt.shape[0], -1, self.C, self.H).permute(0, 3, 1, 2)

    def unchunk(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of :meth:`chunked`: ``[B, H, n, C, D]`` -> ``[B, length, H, D]``."""
        B, H, n, C, D = x.shape
        return x.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, D)[:, :length]


class _Segment:
    """One segment's recomputable quantities: cumulative decays, intra-chunk decay matrix, state updates."""

    def __init__(self, plan: _Plan, qc, kc, vc, gc) -> None:
        self.b = torch.cumsum(gc, dim=-1)  # [B|1, H, n, C]
        self.b_total = self.b[..., -1]  # [B|1, H, n]
        if plan.decay_fixed is not None:
            self.decay = plan.decay_fixed
        else:
            diff = self.b[..., :, None] - self.b[..., None, :]
            self.decay = torch.exp(torch.where(plan.causal, diff, float("-inf")))  # [B, H, n, C, C]
        self.k_end = kc * torch.exp(self.b_total[..., None] - self.b)[..., None]  # keys decayed to chunk end
        self.q_start = qc * torch.exp(self.b)[..., None]  # queries decayed from chunk start
        B, H, n = qc.shape[:3]
        self.chunk_decay = torch.exp(self.b_total).expand(B, H, n)[..., None, None]  # [B, H, n, 1, 1]

    def states(self, state: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States entering each chunk ``[B, H, n, Dk, Dv]`` and the state after the segment."""
        updates = torch.matmul(self.k_end.transpose(-1, -2), vc)
        starts = []
        for a, u in zip(self.chunk_decay.unbind(2), updates.unbind(2)):
            starts.append(state)
            state = torch.addcmul(u, a, state)
        return torch.stack(starts, dim=2), state


def _forward(q, k, v, g, state, plan: _Plan, saved: list[torch.Tensor] | None):
    """Outputs ``[B, T, H, Dv]`` and the final state; appends each segment's entering state to ``saved``."""
    o = q.new_empty(plan.B, plan.T, plan.H, plan.Dv)
    for start, stop in plan.segments():
        if saved is not None:
            saved.append(state)
        qc, kc, vc = (plan.chunked(x, start, stop) for x in (q, k, v))
        seg = _Segment(plan, qc, kc, vc, plan.log_decay(g, start, stop))
        prev, state = seg.states(state, kc, vc)
        oc = torch.matmul(torch.matmul(qc, kc.transpose(-1, -2)) * seg.decay, vc)
        oc = oc + torch.matmul(seg.q_start, prev)
        o[:, start:stop] = plan.unchunk(oc, stop - start)
    return o, state


def _backward(q, k, v, g, starts, do, d_state, plan: _Plan):
    """Gradients of q, k, v, the per-step log decay ``[B|1, T, H]`` (before the final-state term) and the
    initial state, walking the segments in reverse with ``d_state`` the gradient of the state after each."""
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dcum = q.new_empty(plan.B, plan.T, plan.H)  # gradient of the cumulative log decay at each step
    for (start, stop), state in reversed(list(zip(plan.segments(), starts))):
        qc, kc, vc, doc = (plan.chunked(x, start, stop) for x in (q, k, v, do))
        seg = _Segment(plan, qc, kc, vc, plan.log_decay(g, start, stop))
        prev, _ = seg.states(state, kc, vc)
        # Gradient of the state leaving each chunk, from the segment's end backwards.
        d_prev = torch.matmul(seg.q_start.transpose(-1, -2), doc)  # each chunk's outputs -> its entering state
        d_next = []
        for a, d in zip(reversed(seg.chunk_decay.unbind(2)), reversed(d_prev.unbind(2))):
            d_next.append(d_state)
            d_state = torch.addcmul(d, a, d_state)
        d_next = torch.stack(d_next[::-1], dim=2)  # [B, H, n, Dk, Dv]
        scores = torch.matmul(qc, kc.transpose(-1, -2)) * seg.decay  # [B, H, n, C, C]
        d_scores = torch.matmul(doc, vc.transpose(-1, -2)) * seg.decay
        dqc = torch.matmul(d_scores, kc) + torch.matmul(doc, prev.transpose(-1, -2)) * torch.exp(seg.b)[..., None]
        dkc = (
            torch.matmul(d_scores.transpose(-1, -2), qc)
            + torch.matmul(vc, d_next.transpose(-1, -2)) * (torch.exp(seg.b_total[..., None] - seg.b)[..., None])
        )
        dvc = torch.matmul(scores.transpose(-1, -2), doc) + torch.matmul(seg.k_end, d_next)
        n = stop - start
        dq[:, start:stop] = plan.unchunk(dqc, n)
        dk[:, start:stop] = plan.unchunk(dkc, n)
        dv[:, start:stop] = plan.unchunk(dvc, n)
        # Each query row scales with exp(cum_n), each key row with exp(-cum_m) (docs/retention.md).
        dcum[:, start:stop] = plan.unchunk(((qc * dqc).sum(-1) - (kc * dkc).sum(-1))[..., None], n)[..., 0]
    return dq, dk, dv, dcum, d_state


class ChunkwiseRetention(torch.autograd.Function):
    """The chunkwise form as one autograd node that saves inputs and segment-start states only."""

    @staticmethod
    def forward(ctx, q, k, v, g, initial_state, chunk_size: int, per_segment: int | None):
        plan = _Plan(q, v, g, chunk_size, per_segment)
        state = initial_state if initial_state is not None else q.new_zeros(plan.B, plan.H, q.shape[-1], plan.Dv)
        starts: list[torch.Tensor] = []
        o, final = _forward(q, k, v, g, state, plan, starts)
        ctx.save_for_backward(q, k, v, g, final, *starts)
        ctx.plan = plan
        ctx.has_state = initial_state is not None
        ctx.set_materialize_grads(False)
        return o, final

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, g, final, *starts = ctx.saved_tensors
        plan: _Plan = ctx.plan
        if do is None:
            do = torch.zeros_like(q[..., :1]).expand(*q.shape[:-1], plan.Dv)
        d_state = d_final if d_final is not None else final.new_zeros(final.shape)
        dq, dk, dv, dcum, d_initial = _backward(q, k, v, g, starts, do, d_state, plan)
        dg = None
        if ctx.needs_input_grad[3]:
            # g_t enters every cum_n with n >= t: a reverse cumulative sum, accumulated in float64.
            dg = dcum.double().flip(1).cumsum(1).flip(1)
            if d_final is not None:  # the final state scales with exp(cum_T)
                dg = dg + (d_final * final).sum((-1, -2)).double()[:, None, :]
            dg = (dg.sum((0, 1)) if plan.fixed else dg).to(g.dtype)
        d_initial = d_initial if ctx.has_state and ctx.needs_input_grad[4] else None
        return dq, dk, dv, dg, d_initial, None, None


def chunkwise_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    chunk_size: int,
    chunks_per_segment: int | None = -1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``chunks_per_segment``: -1 picks by device (see :func:`segment_chunks`), None = one segment.

    Without gradients the forward runs directly (nothing saved); with them through
    :class:`ChunkwiseRetention`.
    """
    if chunks_per_segment is not None and chunks_per_segment != -1 and chunks_per_segment < 1:
        raise ValueError(f"chunks_per_segment must be -1, None or >= 1, got {chunks_per_segment}")
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, initial_state))
    if needs_grad:
        o, final = ChunkwiseRetention.apply(q, k, v, g, initial_state, chunk_size, chunks_per_segment)
    else:
        plan = _Plan(q, v, g, chunk_size, chunks_per_segment)
        state = initial_state if initial_state is not None else q.new_zeros(plan.B, plan.H, q.shape[-1], plan.Dv)
        o, final = _forward(q, k, v, g, state, plan, None)
    return o, (final if output_final_state else None)
