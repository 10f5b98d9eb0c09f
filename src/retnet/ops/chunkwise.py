"""Chunkwise form (YOCO / flash-linear-attention convention) with its own backward. O(T C) time, O(T) memory.

Per chunk, with ``b`` the inclusive cumulative log decay inside the chunk and ``b_C`` its total:
``O = (Q K^T * exp(b_j - b_i)[i <= j]) V + (Q * exp(b)) S_prev`` and
``S_next = exp(b_C) S_prev + (K * exp(b_C - b))^T V``.
A short last chunk is its own smaller product in the forward and zero-padded (zero log decay, zero keys) in the
backward, which changes neither outputs nor state.

The chunks are processed in segments of a few MiB per tensor: intra-chunk terms are batched over a
segment's chunks; the state's terms loop over the chunks on one state updated in place (it stays in cache).
The forward reads the inputs and writes the outputs in their ``[B, T, H, D]`` layout (a head's chunk rows are
a matrix with a row stride); the backward works on copies in chunk layout ``[B, H, n, C, D]``.
Segments bound every temporary; all of them live in one buffer per call (:class:`_Work`) that every segment
reuses, written with ``out=`` and in-place ops, so a call allocates its outputs and one block instead of a
churn of per-segment tensors (docs/benchmarks/retention.md). :func:`chunkwise_state` is the state update alone
(no queries, no outputs), one product per head and segment.

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


def segment_chunks(
    B: int, H: int, C: int, Dk: int, Dv: int, itemsize: int, device: torch.device, forward_only: bool = False
) -> int:
    """Chunks per segment: keeps ``[B, H, n*C, max(C, Dk, Dv)]`` (the backward's chunk-layout tensors) near the
    device's target size; ``forward_only`` (no backward will follow): the forward's own temporaries, the decayed
    queries and keys ``[B, n*C, H, Dk]``."""
    target = CPU_SEGMENT_BYTES if device.type == "cpu" else DEVICE_SEGMENT_BYTES
    per_chunk = B * H * C * (Dk if forward_only else max(C, Dk, Dv)) * itemsize
    return max(1, target // per_chunk)


class _Plan:
    """Chunk length, segment length and the fixed-decay constants shared by forward and backward."""

    def __init__(
        self,
        q: torch.Tensor,
        v: torch.Tensor,
        g: torch.Tensor,
        chunk_size: int,
        per_segment: int | None,
        forward_only: bool = False,
    ):
        B, T, H, Dk = q.shape
        self.B, self.T, self.H, self.Dv = B, T, H, v.shape[-1]
        self.C = C = min(chunk_size, T)
        self.N = -(-T // C)
        self.forward_only = forward_only
        if per_segment == -1:
            per_segment = segment_chunks(B, H, C, Dk, self.Dv, q.element_size(), q.device, forward_only)
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
    # state's terms run chunk by chunk on one state). The forward uses "q_start", "k_end" and "scores" (alone when
    # no backward follows); the backward's scaled rows go to "tv", its temporary for the log-decay gradient
    # reuses "q_start".
    SLOTS = {
        "k": ("q", "k", "k_end", "q_start", "dq", "dk"),
        "v": ("v", "do", "dv", "tv"),
        "c": ("scores", "d_scores"),
    }
    FORWARD_SLOTS = ("k_end", "q_start", "scores")

    def __init__(self, plan: _Plan, like: torch.Tensor, only: tuple[str, ...] | None = None) -> None:
        """``only``: allocate just these slots (default: every one)."""
        chunks = plan.B * plan.H * plan.S
        per_chunk = {
            "k": plan.C * like.shape[-1],
            "v": plan.C * plan.Dv,
            "c": plan.C * plan.C,
        }
        self.offsets: dict[str, tuple[int, int]] = {}
        total = 0
        for kind, names in self.SLOTS.items():
            for name in names if only is None else [n for n in names if n in only]:
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


class _Decays:
    """One segment's decay factors (from its per-step log decays ``gc``: ``[B|1, H, n, C]``, padded steps 0): the
    cumulative decays ``b``, the intra-chunk decay matrix, each row's factor from the chunk's start and to its end,
    and each chunk's total decay."""

    def __init__(self, plan: _Plan, gc: torch.Tensor) -> None:
        self.b = torch.cumsum(gc, dim=-1)  # [B|1, H, n, C]
        self.b_total = self.b[..., -1]  # [B|1, H, n]
        if plan.decay_fixed is not None:
            self.decay = plan.decay_fixed
        else:
            diff = self.b[..., :, None] - self.b[..., None, :]
            self.decay = torch.exp(torch.where(plan.causal, diff, float("-inf")))  # [B, H, n, C, C]
        self.to_end = torch.exp(self.b_total[..., None] - self.b)[..., None]  # [B|1, H, n, C, 1]
        self.from_start = torch.exp(self.b)[..., None]

    @staticmethod
    def per_step(factor: torch.Tensor, steps: int) -> torch.Tensor:
        """A ``[B|1, H, n, C, 1]`` per-row factor as ``[B|1, steps, H, 1]``: one value per time step, to scale a
        ``[B, steps, H, D]`` slice of the inputs in their own layout."""
        B, H, n, C, _ = factor.shape
        return factor.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, 1)[:, :steps]


class _Segment(_Decays):
    """The backward's view of one segment: its decays, the keys and queries decayed in chunk layout, and the
    state's terms chunk by chunk."""

    def __init__(self, plan: _Plan, work: _Work, qc, kc, gc) -> None:
        super().__init__(plan, gc)
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


def _intra_chunk(q, k, v, dec: _Decays, o, scores_buffer: torch.Tensor, C: int) -> None:
    """``o = (Q K^T * decay) V`` chunk by chunk for ``q, k: [B, L, H, Dk]``, ``v``, ``o: [B, L, H, Dv]`` (one
    segment in the callers' layout: the products read and write each head's chunk rows as matrices with a row
    stride). Whole chunks are batched per batch row and head; a short last chunk is one product of its own."""
    B, L, H, _ = q.shape
    whole, short = divmod(L, C)
    for b in range(B):
        for h in range(H):
            decay = dec.decay[b if dec.decay.shape[0] > 1 else 0, h]  # [1 | n, C, C]
            if whole:
                rows = slice(0, whole * C)
                qh, kh, vh, oh = (x[b, rows, h].unflatten(0, (whole, C)) for x in (q, k, v, o))
                scores = torch.bmm(qh, kh.transpose(1, 2), out=scores_buffer[: whole * C * C].view(whole, C, C))
                torch.bmm(scores.mul_(decay[:whole]), vh, out=oh)
            if short:
                rows = slice(whole * C, L)
                qh, kh, vh, oh = (x[b, rows, h] for x in (q, k, v, o))
                scores = torch.mm(qh, kh.T, out=scores_buffer[: short * short].view(short, short))
                last = decay[min(whole, decay.shape[0] - 1), :short, :short]
                torch.mm(scores.mul_(last), vh, out=oh)


def _decay_values(totals: torch.Tensor):
    """Decay factors to index as ``[b][h]...``: Python floats from a CPU tensor (a product's ``beta``); the tensor
    itself on an accelerator (reading values back would wait for the device) or when it records gradients."""
    return totals.tolist() if totals.device.type == "cpu" and not totals.requires_grad else totals


def _decay_and_add_(S: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, decay) -> None:
    """``S = decay S + keys^T values`` in place (``S: [Dk, Dv]``, ``keys: [L, Dk]``, ``values: [L, Dv]``, row-strided
    views welcome). A float decay is the product's ``beta`` (one pass over ``S``), a tensor one ``mul_`` first."""
    if isinstance(decay, float):
        S.addmm_(keys.T, values, beta=decay)
    else:
        S.mul_(decay)
        S.addmm_(keys.T, values)


def _carry(state: torch.Tensor, q_start, k_end, v, dec: _Decays, o, C: int) -> None:
    """Chunk by chunk: adds the state's term ``(Q * exp(b)) S`` to the outputs ``o`` and advances ``state``
    (``[B, H, Dk, Dv]``, contiguous, updated in place) past the chunk, ``S = exp(b_C) S + K_end^T V``. One state
    stays in cache throughout instead of every chunk's entering state being written out and read back."""
    B, L, H, _ = q_start.shape
    totals = _decay_values(torch.exp(dec.b_total))  # [B|1, H, n]
    per_batch = dec.b_total.shape[0] > 1
    heads = [(b if per_batch else 0, h) for b in range(B) for h in range(H)]
    views = [
        (o[b, :, h], q_start[b, :, h], k_end[b, :, h], v[b, :, h], state[b, h]) for b in range(B) for h in range(H)
    ]
    for i, start in enumerate(range(0, L, C)):
        rows = slice(start, min(start + C, L))
        for (bt, h), (oh, qh, kh, vh, S) in zip(heads, views):
            oh[rows].addmm_(qh[rows], S)
            _decay_and_add_(S, kh[rows], vh[rows], totals[bt][h][i])


def _forward(q, k, v, g, state, plan: _Plan, saved: list[torch.Tensor] | None, owned: bool = False):
    """Outputs ``[B, T, H, Dv]`` and the final state; appends each segment's entering state to ``saved``.
    ``owned``: ``state`` is this call's own (fresh zeros), advanced in place without a copy when nothing is saved.

    Works on the inputs in their ``[B, T, H, D]`` layout: every product reads a head's chunk rows as a matrix
    with a row stride, so nothing is copied into chunk layout and back (docs/retention.md, "Chunkwise form")."""
    # Allocated before the output: with a backward to follow, its buffer (the same size) then reuses this block.
    work = _Work(plan, q, _Work.FORWARD_SLOTS if plan.forward_only else None)
    B, H, Dk = plan.B, plan.H, q.shape[-1]
    o = q.new_empty(B, plan.T, H, plan.Dv)
    for start, stop in plan.segments():
        if saved is not None:
            saved.append(state)
        if saved is not None or (start == 0 and not owned):  # advanced in place: the caller's and saved ones stay
            state = state.clone(memory_format=torch.contiguous_format)
        L = stop - start
        dec = _Decays(plan, plan.log_decay(g, start, stop))
        qs, ks, vs, os_ = q[:, start:stop], k[:, start:stop], v[:, start:stop], o[:, start:stop]
        q_start = torch.mul(qs, dec.per_step(dec.from_start, L), out=work.get("q_start", (B, L, H, Dk)))
        k_end = torch.mul(ks, dec.per_step(dec.to_end, L), out=work.get("k_end", (B, L, H, Dk)))
        _intra_chunk(qs, ks, vs, dec, os_, work.get("scores", (plan.S * plan.C * plan.C,)), plan.C)
        _carry(state, q_start, k_end, vs, dec, os_, plan.C)
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


def chunkwise_state(
    k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None
) -> torch.Tensor:
    """The state after ``k, v: [B, T, H, D]`` from ``initial_state`` (``[B, H, Dk, Dv]``, not modified; None:
    zeros), no outputs:
    ``S = exp(b_T) S_0 + (K * exp(b_T - b))^T V`` over segments of a few MiB, one product per batch row and head per
    segment (the chunkwise update with one chunk per segment: no query needs the states in between).
    ``g``: ``[H]`` or ``[B, T, H]`` log decays; the cumulative sums run in float64."""
    B, T, H, Dk = k.shape
    if initial_state is None:
        state = k.new_zeros(B, H, Dk, v.shape[-1])
    else:
        state = initial_state.clone(memory_format=torch.contiguous_format)
    target = CPU_SEGMENT_BYTES if k.device.type == "cpu" else DEVICE_SEGMENT_BYTES
    step = max(1, target // (B * H * Dk * k.element_size()))
    for start in range(0, T, step):
        stop = min(start + step, T)
        if g.dim() == 1:
            steps = torch.arange(1, stop - start + 1, dtype=torch.float64, device=g.device)
            b = (steps[:, None] * g.double())[None]  # [1, L, H]: exact multiples, no running sum
        else:
            b = torch.cumsum(g[:, start:stop].double(), dim=1)  # [B, L, H]
        k_end = k[:, start:stop] * torch.exp(b[:, -1:] - b).to(k.dtype)[..., None]
        totals = _decay_values(torch.exp(b[:, -1]).to(k.dtype))  # [B|1, H]
        per_batch = b.shape[0] > 1
        for bi in range(B):
            for h in range(H):
                _decay_and_add_(state[bi, h], k_end[bi, :, h], v[bi, start:stop, h], totals[bi if per_batch else 0][h])
    return state


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
        plan = _Plan(q, v, g, chunk_size, chunks_per_segment, forward_only=True)
        owned = initial_state is None
        state = q.new_zeros(plan.B, plan.H, q.shape[-1], plan.Dv) if owned else initial_state
        o, final = _forward(q, k, v, g, state, plan, None, owned)
    return o, (final if output_final_state else None)
