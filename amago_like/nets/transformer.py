"""Pre-norm transformer pieces with a per-actor KV cache for step-by-step rollouts.

Positions come from the *global* timestep index of each token (added to the input), so
cached keys/values never depend on where a token sits inside the cache. That lets the cache
be a ring buffer: when a row is full, the newest token overwrites the oldest slot, and
attention (a weighted sum over keys) does not care about slot order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gin
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


# ---------------------------------------------------------------- positional embeddings
@gin.configurable
class LearnedPosEmb(nn.Module):
    """Lookup table indexed by the global time index (clamped to max_time_idx)."""

    def __init__(self, d_model: int, max_time_idx: int = 5000):
        super().__init__()
        self.max_time_idx = max_time_idx
        self.emb = nn.Embedding(max_time_idx + 1, d_model)

    def forward(self, time_idxs: Tensor) -> Tensor:  # (B, L) long -> (B, L, D)
        return self.emb(time_idxs.clamp(0, self.max_time_idx))


@gin.configurable
class FixedPosEmb(nn.Module):
    """Sinusoidal embedding of the global time index (clamped to max_time_idx)."""

    def __init__(self, d_model: int, max_time_idx: int = 5000):
        super().__init__()
        self.max_time_idx = max_time_idx
        pos = torch.arange(max_time_idx + 1).float()[:, None]  # (T, 1)
        freqs = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_time_idx + 1, d_model)
        table[:, 0::2] = torch.sin(pos * freqs)
        table[:, 1::2] = torch.cos(pos * freqs[: d_model // 2])
        self.register_buffer("table", table, persistent=False)  # (T, D)

    def forward(self, time_idxs: Tensor) -> Tensor:  # (B, L) long -> (B, L, D)
        return self.table[time_idxs.clamp(0, self.max_time_idx)]


# ---------------------------------------------------------------- attention + block
@gin.configurable
class SelfAttention(nn.Module):
    """Multi-head self-attention on top of F.scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float = 0.0, causal: bool = True):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.attn_dropout, self.causal = n_heads, attn_dropout, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # (B, L, D) -> 3 x (B, H, L, hd)
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_heads)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        q, k, v = self._qkv(x)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, slot: Tensor, valid: Tensor) -> Tensor:
        """One new token per row, using and updating the cache in place.

        x: (B, 1, D); k_cache, v_cache: (B, H, S, hd); slot: (B,) long, where each row's new
        key/value is written; valid: (B, 1, 1, S) bool, cache slots the row may attend to
        (its own past tokens + the slot being written now).
        """
        q, k, v = self._qkv(x)  # (B, H, 1, hd)
        rows = torch.arange(x.shape[0], device=x.device)
        k_cache[rows, :, slot] = k[:, :, 0].to(k_cache.dtype)  # (B, H, hd) written at (row, :, slot[row])
        v_cache[rows, :, slot] = v[:, :, 0].to(v_cache.dtype)
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=valid)  # (B, H, 1, hd)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))


@gin.configurable
class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FF(LN(x))."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        causal: bool = True,
    ):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, attn_dropout, causal)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ff(self.ln2(x)))

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, slot: Tensor, valid: Tensor) -> Tensor:  # (B, 1, D)
        x = x + self.drop(self.attn.step(self.ln1(x), k_cache, v_cache, slot, valid))
        return x + self.drop(self.ff(self.ln2(x)))


# ---------------------------------------------------------------- rollout cache
@dataclass
class KVCache:
    """Rollout state for B parallel actors.

    k, v: (n_layers, B, H, S, hd) -- k[i] is layer i's (B, n_heads, max_seq_len, head_dim) cache.
    n:    (B,) long, tokens seen since the row's last reset (may exceed S; slots = n % S).
    x0:   (B, S, D) block inputs of the cached tokens (only kept for overflow="recompute").
    """

    k: Tensor
    v: Tensor
    n: Tensor
    x0: Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def lengths(self) -> Tensor:  # (B,) number of valid cached tokens per row
        return self.n.clamp(max=self.max_len)

    def reset(self, dones: Tensor) -> None:  # dones: (B,) bool; stale entries are masked out, not zeroed
        self.n.masked_fill_(dones.to(self.n.device, torch.bool), 0)
