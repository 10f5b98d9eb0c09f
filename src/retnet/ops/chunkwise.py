"""Chunkwise form (YOCO / flash-linear-attention convention). O(T C) time, O(T) memory.

Per chunk, with ``b`` the inclusive cumulative log decay inside the chunk and ``b_C`` its total:
``O = (Q K^T * exp(b_j - b_i)[i <= j]) V + (Q * exp(b)) S_prev`` and
``S_next = exp(b_C) S_prev + (K * exp(b_C - b))^T V``.
The sequence is zero-padded at the end to a multiple of the chunk (zero log decay, zero keys), which
changes neither outputs nor state. Intra-chunk terms are batched over all chunks; only the cheap
state hand-off runs as a loop over chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunkwise_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    # [B, H, N, C, D]
    qc, kc, vc = (x.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))

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
        L = L.reshape(1, H, 1, C, C)
    else:
        if pad:
            g = F.pad(g, (0, 0, 0, pad))
        gc = g.reshape(B, N, C, H).permute(0, 3, 1, 2)  # [B, H, N, C]
        L = None
    b = torch.cumsum(gc, dim=-1)  # [B|1, H, N, C]
    b_total = b[..., -1]  # [B|1, H, N]
    if L is None:
        L = torch.where(causal, b[..., :, None] - b[..., None, :], float("-inf"))

    o = torch.matmul(torch.matmul(qc, kc.transpose(-1, -2)) * torch.exp(L), vc)  # intra-chunk
    # Each chunk's own contribution to the state at its end.
    updates = torch.matmul((kc * torch.exp(b_total[..., None] - b)[..., None]).transpose(-1, -2), vc)
    chunk_decay = torch.exp(b_total).expand(B, H, N)[..., None, None]  # [B, H, N, 1, 1]

    state = initial_state if initial_state is not None else q.new_zeros(B, H, Dk, Dv)
    # unbind, not indexing: the backward of N index ops would build N full-size gradients (O(N^2) work).
    decays, ups = chunk_decay.unbind(2), updates.unbind(2)
    starts = []
    for c in range(N):
        starts.append(state)
        state = decays[c] * state + ups[c]
    prev = torch.stack(starts, dim=2)  # [B, H, N, Dk, Dv]: the state entering each chunk
    o = o + torch.matmul(qc * torch.exp(b)[..., None], prev)

    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, Dv)[:, :T]
    return o, (state if output_final_state else None)
