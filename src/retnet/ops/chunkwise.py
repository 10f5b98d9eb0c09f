"""Chunkwise form (YOCO / flash-linear-attention convention) with its own backward. O(T C) time, O(T) memory.

Per chunk, with ``b`` the inclusive cumulative log decay inside the chunk and ``b_C`` its total:
``O = (Q K^T * exp(b_j - b_i)[i <= j]) V + (Q * exp(b)) S_prev`` and
``S_next = exp(b_C) S_prev + (K * exp(b_C - b))^T V``.
A short last chunk is zero-padded (zero log decay, zero keys), which changes neither outputs nor state.

The chunks are processed in segments of a few MiB per tensor: intra-chunk terms are batched over a
segment's chunks; the state's terms loop over the chunks on one state updated in place (it stays in cache).
Segments bound every temporary; all of them live in one buffer per call (:class:`_Work`) that every segment
reuses, written with ``out=`` and in-place ops, so a call allocates its outputs and one block instead of a
churn of per-segment tensors (docs/benchmarks/retention.md).

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

    def chunked(self, work: _Work, name: str, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``[B, T, H, D]`` steps ``start:stop`` as ``[B, H, n, C, D]`` chunks in ``work``'s buffer ``name``,
        zero-padded to whole chunks (one strided copy, no intermediate)."""
        n = -(-(stop - start) // self.C)
        out = work.get(name, (x.shape[0], self.H, n, self.C, x.shape[-1]))
        flat = out.view(x.shape[0], self.H, n * self.C, x.shape[-1])
        flat[:, :, : stop - start].copy_(x[:, start:stop].permute(0, 2, 1, 3))
        flat[:, :, stop - start :].zero_()
        return out

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

    def unchunk_into(self, out: torch.Tensor, x: torch.Tensor, start: int, stop: int) -> None:
        """Inverse of :meth:`chunked`: writes ``[B, H, n, C, D]`` chunks into steps ``start:stop`` of ``out``."""
        B, H, n, C, D = x.shape
        out[:, start:stop].copy_(x.view(B, H, n * C, D)[:, :, : stop - start].permute(0, 2, 1, 3))


class _Work:
    """One buffer per call holding every per-segment temporary (sized for the largest segment) at a fixed
    offset per name. Segments reuse it instead of allocating a churn of same-sized tensors, and forward and
    backward ask for the same size, so the backward's buffer refills the forward's freed block: this keeps
    the heap from fragmenting (and on the CPU from faulting fresh pages per segment)."""

    # Slots by last-two-dims kind: "k" [C, Dk], "v" [C, Dv], "c" [C, C] per chunk (no per-chunk state: the
    # state's terms run chunk by chunk on one state). The forward writes its outputs into the backward's "dv"
    # slot; the backward's scaled rows go to "tv", its temporary for the log-decay gradient reuses "q_start".
    SLOTS = {
        "k": ("q", "k", "k_end", "q_start", "dq", "dk"),
        "v": ("v", "do", "dv", "tv"),
        "c": ("scores", "d_scores"),
    }

    def __init__(self, plan: _Plan, like: torch.Tensor) -> None:
        chunks = plan.B * plan.H * plan.S
        per_chunk = {
            "k": plan.C * like.shape[-1],
            "v": plan.C * plan.Dv,
            "c": plan.C * plan.C,
        }
        self.offsets: dict[str, tuple[int, int]] = {}
        total = 0
        for kind, names in self.SLOTS.items():
            for name in names:
                self.offsets[name] = (total, chunks * per_chunk[kind])
                total += chunks * per_chunk[kind]
        self.buffer = like.new_empty(total)

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous ``shape`` view of slot ``name`` (contents undefined)."""
        start, size = self.offsets[name]
        numel = 1
        for d in shape:
            numel *= d
        if numel > size:
            raise ValueError(f"segment buffer {name!r} holds {size} elements, {shape} needs {numel}")
        return self.buffer[start : start + numel].view(shape)


class _Segment:
    """One segment's recomputable quantities (cumulative decays, intra-chunk decay matrix, decayed keys and
    queries) and the state's terms, chunk by chunk."""

    def __init__(self, plan: _Plan, work: _Work, qc, kc, gc) -> None:
        self.b = torch.cumsum(gc, dim=-1)  # [B|1, H, n, C]
        self.b_total = self.b[..., -1]  # [B|1, H, n]
        if plan.decay_fixed is not None:
            self.decay = plan.decay_fixed
        else:
            diff = self.b[..., :, None] - self.b[..., None, :]
            self.decay = torch.exp(torch.where(plan.causal, diff, float("-inf")))  # [B, H, n, C, C]
        self.to_end = torch.exp(self.b_total[..., None] - self.b)[..., None]  # [B|1, H, n, C, 1]
        self.from_start = torch.exp(self.b)[..., None]
        self.k_end = torch.mul(kc, self.to_end, out=work.get("k_end", kc.shape))  # keys decayed to chunk end
        self.q_start = torch.mul(qc, self.from_start, out=work.get("q_start", qc.shape))  # from chunk start
        B, H, n = qc.shape[:3]
        self.chunk_decay = torch.exp(self.b_total).expand(B, H, n)[..., None, None]  # [B, H, n, 1, 1]

    @staticmethod
    def _chunk(x: torch.Tensor, i: int) -> torch.Tensor:
        """Chunk ``i`` of ``[B, H, n, C, D]`` chunks as a ``[B * H, C, D]`` view (batch and head as one batch; a
        view, never a copy, since the in-place products write through it)."""
        return x[:, :, i].view(-1, *x.shape[-2:])

    def _decay_and_add(self, S: torch.Tensor, i: int, left: torch.Tensor, right: torch.Tensor) -> None:
        """``S = exp(b_C) S + left_i^T right_i`` in place for chunk ``i`` (``S``: ``[B * H, Dk, Dv]``): the state
        advancing past the chunk (``K * exp(b_C - b)``, ``V``), or its gradient going back over it (``Q * exp(b)``,
        ``dO``)."""
        S.mul_(self.chunk_decay[:, :, i].reshape(S.shape[0], 1, 1))
        S.baddbmm_(self._chunk(left, i).transpose(1, 2), self._chunk(right, i))

    def carry(self, state: torch.Tensor, vc: torch.Tensor, oc: torch.Tensor) -> None:
        """Chunk by chunk: adds the state's term ``(Q * exp(b)) S`` to the chunk's outputs ``oc`` and advances
        ``state`` (``[B, H, Dk, Dv]``, contiguous, updated in place) past the chunk. One state stays in cache
        throughout instead of every chunk's entering state being written out and read back."""
        S = state.view(-1, *state.shape[-2:])
        for i in range(vc.shape[2]):
            self._chunk(oc, i).baddbmm_(self._chunk(self.q_start, i), S)
            self._decay_and_add(S, i, self.k_end, vc)

    def carry_back(self, state, d_state, vc, doc, dqc, dkc, dvc, scratch) -> torch.Tensor:
        """The state's terms of the gradients, chunk by chunk on one state and one state gradient (each stays in
        cache). A forward sweep from the segment's entering ``state`` (not modified) adds ``(dO S^T) * exp(b)`` to
        ``dqc``; a reverse sweep from ``d_state``, the gradient of the state leaving the segment, adds
        ``(V dS^T) * exp(b_C - b)`` to ``dkc`` and ``(K * exp(b_C - b)) dS`` to ``dvc``, with ``dS`` the gradient of
        the state leaving each chunk. ``scratch``: a ``vc``-shaped buffer. Returns the gradient of the state
        entering the segment."""
        n = vc.shape[2]
        rows = torch.mul(doc, self.from_start, out=scratch)  # (dO S^T) * exp(b) = (dO * exp(b)) S^T, row by row
        S = state.clone(memory_format=torch.contiguous_format).view(-1, *state.shape[-2:])
        for i in range(n):
            self._chunk(dqc, i).baddbmm_(self._chunk(rows, i), S.transpose(1, 2))
            self._decay_and_add(S, i, self.k_end, vc)
        rows = torch.mul(vc, self.to_end, out=scratch)
        dS = d_state.clone(memory_format=torch.contiguous_format).view(-1, *d_state.shape[-2:])
        for i in reversed(range(n)):
            self._chunk(dkc, i).baddbmm_(self._chunk(rows, i), dS.transpose(1, 2))
            self._chunk(dvc, i).baddbmm_(self._chunk(self.k_end, i), dS)
            self._decay_and_add(dS, i, self.q_start, doc)  # each chunk's outputs -> the state entering it
        return dS.view(d_state.shape)


def _forward(q, k, v, g, state, plan: _Plan, saved: list[torch.Tensor] | None):
    """Outputs ``[B, T, H, Dv]`` and the final state; appends each segment's entering state to ``saved``."""
    work = _Work(plan, q)  # before the output: the backward's buffer then reuses this block
    o = q.new_empty(plan.B, plan.T, plan.H, plan.Dv)
    for start, stop in plan.segments():
        if saved is not None:
            saved.append(state)
        if saved is not None or start == 0:  # advanced in place below: the caller's and the saved states stay
            state = state.clone(memory_format=torch.contiguous_format)
        qc, kc, vc = (plan.chunked(work, name, x, start, stop) for name, x in (("q", q), ("k", k), ("v", v)))
        seg = _Segment(plan, work, qc, kc, plan.log_decay(g, start, stop))
        scores = torch.matmul(qc, kc.transpose(-1, -2), out=work.get("scores", (*qc.shape[:-1], plan.C)))
        oc = torch.matmul(scores.mul_(seg.decay), vc, out=work.get("dv", vc.shape))
        seg.carry(state, vc, oc)
        plan.unchunk_into(o, oc, start, stop)
    return o, state


def _backward(q, k, v, g, starts, do, d_state, plan: _Plan):
    """Gradients of q, k, v, the per-step log decay ``[B|1, T, H]`` (before the final-state term) and the
    initial state, walking the segments in reverse with ``d_state`` the gradient of the state after each."""
    work = _Work(plan, q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dcum = q.new_empty(plan.B, plan.T, plan.H)  # gradient of the cumulative log decay at each step
    for (start, stop), state in reversed(list(zip(plan.segments(), starts))):
        qc, kc, vc, doc = (
            plan.chunked(work, name, x, start, stop) for name, x in (("q", q), ("k", k), ("v", v), ("do", do))
        )
        seg = _Segment(plan, work, qc, kc, plan.log_decay(g, start, stop))
        cc = (*qc.shape[:-1], plan.C)
        scores = torch.matmul(qc, kc.transpose(-1, -2), out=work.get("scores", cc)).mul_(seg.decay)
        d_scores = torch.matmul(doc, vc.transpose(-1, -2), out=work.get("d_scores", cc)).mul_(seg.decay)
        dqc = torch.matmul(d_scores, kc, out=work.get("dq", qc.shape))
        dkc = torch.matmul(d_scores.transpose(-1, -2), qc, out=work.get("dk", kc.shape))
        dvc = torch.matmul(scores.transpose(-1, -2), doc, out=work.get("dv", vc.shape))
        d_state = seg.carry_back(state, d_state, vc, doc, dqc, dkc, dvc, work.get("tv", vc.shape))
        plan.unchunk_into(dq, dqc, start, stop)
        plan.unchunk_into(dk, dkc, start, stop)
        plan.unchunk_into(dv, dvc, start, stop)
        # Each query row scales with exp(cum_n), each key row with exp(-cum_m) (docs/retention.md).
        tk = work.get("q_start", qc.shape)  # seg.q_start is not needed after carry_back
        d_cum = torch.mul(qc, dqc, out=tk).sum(-1) - torch.mul(kc, dkc, out=tk).sum(-1)
        plan.unchunk_into(dcum[..., None], d_cum[..., None], start, stop)
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
