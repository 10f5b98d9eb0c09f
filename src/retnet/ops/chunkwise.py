"""Chunkwise form (YOCO / flash-linear-attention convention). O(T C) time, O(T) memory.

Per chunk, with ``b`` the inclusive cumulative log decay inside the chunk and ``b_C`` its total:
``O = (Q K^T * exp(b_j - b_i)[i <= j]) V + (Q * exp(b)) S_prev`` and
``S_next = exp(b_C) S_prev + (K * exp(b_C - b))^T V``.
The sequence is zero-padded at the end to a multiple of the chunk (zero log decay, zero keys), which
changes neither outputs nor state. Intra-chunk terms are batched over the chunks of a segment; only the cheap
state hand-off runs as a loop over chunks.

On the CPU the sequence is processed in segments of a few MiB per tensor. One batch over the whole sequence
makes tensors of tens of MiB at T = 16K; glibc serves those with fresh ``mmap`` pages on every allocation,
and the page faults made forward+backward grow faster than linearly (docs/benchmarks/retention.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Target size of the largest per-segment tensor on the CPU (below glibc's largest mmap threshold, 32 MiB).
CPU_SEGMENT_BYTES = 2 * 2**20


def segment_chunks(B: int, H: int, C: int, Dk: int, Dv: int, itemsize: int, device: torch.device) -> int | None:
    """Chunks per segment: keeps ``[B, H, n*C, max(C, Dk, Dv)]`` near CPU_SEGMENT_BYTES; None = no segments."""
    if device.type != "cpu":
        return None
    per_chunk = B * H * C * max(C, Dk, Dv) * itemsize
    return max(1, CPU_SEGMENT_BYTES // per_chunk)


def _segment(
    qc: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    gc: torch.Tensor,
    decay_fixed: torch.Tensor | None,
    causal: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs ``[B, H, n, C, Dv]`` of n chunks ``[B, H, n, C, D]`` entered with ``state``, and the state after."""
    b = torch.cumsum(gc, dim=-1)  # [B|1, H, n, C]
    b_total = b[..., -1]  # [B|1, H, n]
    if decay_fixed is None:
        decay = torch.exp(torch.where(causal, b[..., :, None] - b[..., None, :], float("-inf")))
    else:
        decay = decay_fixed
    o = torch.matmul(torch.matmul(qc, kc.transpose(-1, -2)) * decay, vc)  # intra-chunk
    # Each chunk's own contribution to the state at its end.
    updates = torch.matmul((kc * torch.exp(b_total[..., None] - b)[..., None]).transpose(-1, -2), vc)
    B, H, n = qc.shape[:3]
    chunk_decay = torch.exp(b_total).expand(B, H, n)[..., None, None]  # [B, H, n, 1, 1]
    # unbind, not indexing: the backward of n index ops would build n full-size gradients (O(n^2) work).
    starts = []
    for a, u in zip(chunk_decay.unbind(2), updates.unbind(2)):
        starts.append(state)
        state = a * state + u
    prev = torch.stack(starts, dim=2)  # [B, H, n, Dk, Dv]: the state entering each chunk
    return o + torch.matmul(qc * torch.exp(b)[..., None], prev), state


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
    """``chunks_per_segment``: -1 picks by device (see :func:`segment_chunks`), None = one segment."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))

    idx = torch.arange(C, device=q.device)
    causal = idx[:, None] >= idx[None, :]
    if g.dim() == 1:
        gt = g[:, None].expand(H, N * C)
        if pad:
            gt = torch.cat([gt[:, :T], gt.new_zeros(H, pad)], dim=1)
        gc = gt.reshape(1, H, N, C)
        # Exact in-chunk decay (j - i) * g; padded tail steps only touch outputs that are sliced away.
        dist = (idx[:, None] - idx[None, :]).to(g.dtype)
        L = torch.where(causal, dist * g[:, None, None, None, None], float("-inf"))  # [H, 1, 1, C, C]
        decay_fixed = torch.exp(L.reshape(1, H, 1, C, C))
    else:
        if pad:
            g = F.pad(g, (0, 0, 0, pad))
        gc = g.reshape(B, N, C, H).permute(0, 3, 1, 2)  # [B, H, N, C]
        decay_fixed = None

    if chunks_per_segment == -1:
        chunks_per_segment = segment_chunks(B, H, C, Dk, Dv, q.element_size(), q.device)
    S = N if chunks_per_segment is None else max(1, min(chunks_per_segment, N))
    state = initial_state if initial_state is not None else q.new_zeros(B, H, Dk, Dv)
    outs = []
    # split, not slicing: one backward node concatenates the segments' gradients (slices would each
    # allocate a full-size zero gradient).
    for qs, ks, vs, gs in zip(q.split(S * C, 1), k.split(S * C, 1), v.split(S * C, 1), gc.split(S, 2)):
        n = gs.shape[2]
        qc, kc, vc = (x.reshape(B, n, C, H, -1).permute(0, 3, 1, 2, 4) for x in (qs, ks, vs))  # [B, H, n, C, D]
        o, state = _segment(qc, kc, vc, gs, decay_fixed, causal, state)
        outs.append(o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, Dv))
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return o[:, :T], (state if output_final_state else None)
