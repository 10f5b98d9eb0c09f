"""Causal softmax attention with a KV cache, for hybrid stacks and YOCO's cross-decoder.

Keys are stored already rotated (the RetNet rotation at each token's absolute position), so a cache never
needs re-rotating. ``KVCache.mask`` marks real tokens when a batch was left padded (``None``: all real).
Three evaluation orders give the same result and mirror retention's modes: ``parallel`` (one SDPA call),
``chunkwise`` (query blocks of ``chunk_size``, bounding the score matrix) and ``recurrent`` (one query at a
time against the cache, the decoding path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from retnet.layers.norm import RMSNorm
from retnet.layers.rotary import apply_rotary

ATTENTION_MODES = ("auto", "parallel", "chunkwise", "recurrent")


@dataclass
class KVCache:
    """Rotated keys and values ``[B, Hkv, L, Dk]`` of every token seen, and which slots are real tokens."""

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None = None  # [B, L] bool; None when no slot is padding

    @property
    def length(self) -> int:
        return int(self.k.shape[2])

    def valid(self) -> torch.Tensor | None:
        return self.mask

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.mask) if t is not None)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> KVCache:
        return KVCache(fn(self.k), fn(self.v), None if self.mask is None else fn(self.mask))

    def append(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> KVCache:
        """A new cache with ``k, v: [B, Hkv, T, Dk]`` added; ``mask [B, T]`` (1 = token) or ``None``."""
        return KVCache(torch.cat([self.k, k], 2), torch.cat([self.v, v], 2), _cat_masks(self, k.shape[2], mask))

    @staticmethod
    def new(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> KVCache:
        keep = None if mask is None or bool(mask.all()) else mask.bool()
        return KVCache(k, v, keep)

    @staticmethod
    def cat_batch(caches: list[KVCache]) -> KVCache:
        """Stack caches along the batch, left-padding shorter ones (their padding is masked out)."""
        length = max(c.length for c in caches)
        if all(c.length == length and c.mask is None for c in caches):
            return KVCache(torch.cat([c.k for c in caches]), torch.cat([c.v for c in caches]))
        ks, vs, ms = [], [], []
        for c in caches:
            pad = length - c.length
            B = c.k.shape[0]
            ks.append(F.pad(c.k, (0, 0, pad, 0)))
            vs.append(F.pad(c.v, (0, 0, pad, 0)))
            m = c.mask if c.mask is not None else torch.ones(B, c.length, dtype=torch.bool, device=c.k.device)
            ms.append(F.pad(m, (pad, 0), value=False))
        return KVCache(torch.cat(ks), torch.cat(vs), torch.cat(ms))


def _cat_masks(cache: KVCache, new_len: int, mask: torch.Tensor | None) -> torch.Tensor | None:
    if cache.mask is None and (mask is None or bool(mask.all())):
        return None
    B, device = cache.k.shape[0], cache.k.device
    old = cache.mask if cache.mask is not None else torch.ones(B, cache.length, dtype=torch.bool, device=device)
    new = mask.bool() if mask is not None else torch.ones(B, new_len, dtype=torch.bool, device=device)
    return torch.cat([old, new], 1)


def attend(
    q: torch.Tensor,
    cache: KVCache,
    q_start: int,
    q_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Queries ``[B, H, T, Dk]`` sitting at cache slots ``q_start .. q_start+T-1`` attend causally to the cache.

    Query t sees the real tokens in slots ``<= q_start + t``. Rows marked 0 in ``q_mask [B, T]`` (padding)
    output zeros. Grouped-query caches (``Hkv < H``) are expanded here.
    """
    B, H, T, _ = q.shape
    end = q_start + T
    if end > cache.length:
        raise ValueError(f"queries end at slot {end} but the cache holds {cache.length}")
    k, v = cache.k[:, :, :end], cache.v[:, :, :end]
    if k.shape[1] != H:
        k, v = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // v.shape[1], 1)
    valid = cache.mask[:, :end] if cache.mask is not None else None
    if valid is None and q_start == 0:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        slots = torch.arange(end, device=q.device)
        allowed = slots[None, :] <= (q_start + torch.arange(T, device=q.device))[:, None]  # [T, end]
        allowed = allowed[None].expand(B, -1, -1)
        if valid is not None:
            allowed = allowed & valid[:, None, :]
            allowed = allowed | ~allowed.any(-1, keepdim=True)  # padded queries with nothing to see: no NaN
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    if q_mask is not None:
        out = out * q_mask.to(out.dtype)[:, None, :, None]
    return out


def attend_in_order(q: torch.Tensor, cache: KVCache, q_start: int, q_mask, mode: str, chunk_size: int):
    """:func:`attend` evaluated in one call, in query blocks, or one query at a time (all equal)."""
    T = q.shape[2]
    step = {"parallel": T, "auto": T, "chunkwise": chunk_size, "recurrent": 1}[mode]
    if step >= T:
        return attend(q, cache, q_start, q_mask)
    outs = []
    for s in range(0, T, step):
        e = min(s + step, T)
        prefix = KVCache(
            cache.k[:, :, : q_start + e],
            cache.v[:, :, : q_start + e],
            None if cache.mask is None else cache.mask[:, : q_start + e],
        )
        outs.append(attend(q[:, :, s:e], prefix, q_start + s, None if q_mask is None else q_mask[:, s:e]))
    return torch.cat(outs, 2)


def _check_mode(mode: str) -> None:
    if mode not in ATTENTION_MODES:
        raise ValueError(f"mode must be one of {ATTENTION_MODES}, got {mode!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal attention with the RetNet rotation and a per-layer KV cache.

    Input/output ``[B, T, hidden_size]``; the state is a :class:`KVCache` (grows by one KV pair per token).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None, *, chunk_size: int = 64):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if hidden_size % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                f"hidden size {hidden_size} must be divisible by {num_heads} heads and heads by {num_kv_heads} kv heads"
            )
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def reset_parameters(self) -> None:
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.out_proj.weight, gain=2**-1)

    def forward(
        self,
        x: torch.Tensor,
        sin: torch.Tensor,
        cos: torch.Tensor,
        *,
        state: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        mode: str = "auto",
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, KVCache | None]:
        _check_mode(mode)
        B, T, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, T, self.num_heads, self.head_dim), sin, cos).to(x.dtype)
        k = apply_rotary(self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim), sin, cos).to(x.dtype)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q_start = state.length if state is not None else 0
        cache = state.append(k, v, attention_mask) if state is not None else KVCache.new(k, v, attention_mask)
        o = attend_in_order(q, cache, q_start, attention_mask, mode, self.chunk_size)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, -1)), (cache if use_cache else None)


class SharedKV(nn.Module):
    """YOCO's global KV: the self-decoder's output normalised once, projected once to keys and values."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None, eps: float = 1e-6):
        super().__init__()
        self.num_kv_heads = num_kv_heads or num_heads
        self.head_dim = hidden_size // num_heads
        self.norm = RMSNorm(hidden_size, eps)
        self.k_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=False)

    def reset_parameters(self) -> None:
        for proj in (self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)

    def forward(self, x, sin, cos, *, state: KVCache | None = None, attention_mask=None) -> KVCache:
        """The cache after appending this call's tokens to ``state``."""
        B, T, _ = x.shape
        h = self.norm(x)
        k = apply_rotary(self.k_proj(h).view(B, T, self.num_kv_heads, self.head_dim), sin, cos).to(x.dtype)
        v = self.v_proj(h).view(B, T, self.num_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        return state.append(k, v, attention_mask) if state is not None else KVCache.new(k, v, attention_mask)


class CrossAttention(nn.Module):
    """YOCO's cross-attention: own queries (rotated), keys and values from the shared :class:`KVCache`."""

    def __init__(self, hidden_size: int, num_heads: int, *, chunk_size: int = 64):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.q_proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.out_proj.weight, gain=2**-1)

    def forward(
        self,
        x: torch.Tensor,
        sin: torch.Tensor,
        cos: torch.Tensor,
        *,
        shared: KVCache,
        q_start: int,
        attention_mask: torch.Tensor | None = None,
        mode: str = "auto",
    ) -> torch.Tensor:
        """``x [B, T, d]`` are the tokens in cache slots ``q_start .. q_start+T-1``."""
        _check_mode(mode)
        B, T, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, T, self.num_heads, self.head_dim), sin, cos).to(x.dtype)
        o = attend_in_order(q.transpose(1, 2), shared, q_start, attention_mask, mode, self.chunk_size)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, -1))
