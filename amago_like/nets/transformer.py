"""Pre-norm transformer pieces with a per-actor KV cache for step-by-step rollouts.

Positions come from the *global* timestep index of each token (added to the input, or rotating
queries and keys with RoPE), so cached keys/values never depend on where a token sits inside the
cache. That lets the cache be a ring buffer: when a row is full, the newest token overwrites the
oldest slot, and attention (a weighted sum over keys) does not care about slot order.
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
class LearnedPosEmb(nn.Module):
    """Lookup table indexed by the global time index (clamped to max_time_idx)."""

    def __init__(self, d_model: int, max_time_idx: int = 5000):
        super().__init__()
        self.max_time_idx = max_time_idx
        self.emb = nn.Embedding(max_time_idx + 1, d_model)

    def forward(self, time_idxs: Tensor) -> Tensor:  # (B, L) long -> (B, L, D)
        return self.emb(time_idxs.clamp(0, self.max_time_idx))


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


class RotaryEmb(nn.Module):
    """Rotary position embedding (RoPE) of the global time index, applied to queries and keys.

    The rotation of a key depends only on its own time index, so rotated keys can be cached.
    Pairs (i, i + hd/2) of each head's channels rotate by angle t * base^(-2i/hd).
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        assert head_dim % 2 == 0, "RoPE needs an even head dimension"
        inv_freq = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)  # (hd/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, time_idxs: Tensor) -> tuple[Tensor, Tensor]:  # (B, L) -> 2 x (B, 1, L, hd/2)
        angles = time_idxs.float()[:, None, :, None] * self.inv_freq  # (B, 1, L, hd/2)
        return angles.cos(), angles.sin()


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:  # (B, H, L, hd) -> (B, H, L, hd)
    cos, sin = (r.to(x.dtype) for r in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@gin.configurable
class SigmaReparamLinear(nn.Module):
    """Linear layer with spectrally reparameterised weights (sigmaReparam, Zhai et al., 2023):
    W' = gamma / sigma(W) * W, sigma(W) the spectral norm, tracked by power iteration.

    One power-iteration step per training-mode forward; eval mode reuses the stored singular
    vectors, so inference is deterministic.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, init_iters: int = 20):
        super().__init__()
        ref = nn.Linear(d_in, d_out, bias=bias)  # borrow nn.Linear's initialisation
        self.weight = nn.Parameter(ref.weight.detach().clone())  # (out, in)
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        self.gamma = nn.Parameter(torch.ones(()))
        self.register_buffer("u", F.normalize(torch.randn(d_out), dim=0))  # (out,) left singular vector
        self.register_buffer("v", F.normalize(torch.randn(d_in), dim=0))  # (in,) right singular vector
        for _ in range(init_iters):
            self._power_iteration()

    @torch.no_grad()
    def _power_iteration(self) -> None:
        w = self.weight.float()
        self.v.copy_(F.normalize(w.T @ self.u, dim=0))
        self.u.copy_(F.normalize(w @ self.v, dim=0))

    def sigma(self) -> Tensor:  # differentiable in W, with the singular vectors held fixed
        return self.u.clone() @ self.weight @ self.v.clone()

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self._power_iteration()
        return F.linear(x, self.weight * (self.gamma / self.sigma()), self.bias)


def make_linear(d_in: int, d_out: int, sigma_reparam: bool = False) -> nn.Module:
    return SigmaReparamLinear(d_in, d_out) if sigma_reparam else nn.Linear(d_in, d_out)


def window_mask(L: int, window: int, device: torch.device) -> Tensor:
    """(L, L) bool, True where query i may attend to key j: i - window < j <= i."""
    i = torch.arange(L, device=device)
    diff = i[:, None] - i[None, :]
    return (diff >= 0) & (diff < window)


# ---------------------------------------------------------------- attention + block
@dataclass(frozen=True)
class BlockConfig:
    """What a transformer block and its attention are built from (``TformerTrajEncoder`` makes one for all blocks)."""

    d_model: int
    n_heads: int
    d_ff: int
    dropout: float = 0.0  # on each block's two residual branches
    attn_dropout: float = 0.0  # on the attention weights
    causal: bool = True
    normformer_norms: bool = False
    sigma_reparam: bool = False
    window: int | None = None  # sliding causal attention: each token sees itself and window - 1 before it

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.window is not None and (self.window < 1 or not self.causal):
            raise ValueError(f"attention window needs causal attention and window >= 1, got {self.window}")


class SelfAttention(nn.Module):
    """Multi-head self-attention on top of F.scaled_dot_product_attention.

    Optional: rotary embeddings (``rope`` argument of forward/step), a sliding causal
    ``window`` (each token sees itself and the window - 1 before it), sigmaReparam linears.
    """

    def __init__(self, config: BlockConfig):
        super().__init__()
        self.n_heads, self.attn_dropout = config.n_heads, config.attn_dropout
        self.causal, self.window = config.causal, config.window
        self.qkv = make_linear(config.d_model, 3 * config.d_model, config.sigma_reparam)
        self.out = make_linear(config.d_model, config.d_model, config.sigma_reparam)

    def _qkv(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_heads)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q, k, v  # 3 x (B, H, L, hd)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:  # (B, L, D) -> (B, L, D)
        q, k, v = self._qkv(x, rope)
        p = self.attn_dropout if self.training else 0.0
        if self.window is not None and self.window < x.shape[1]:
            mask = window_mask(x.shape[1], self.window, x.device)  # (L, L)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))

    def step(
        self,
        x: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        slot: Tensor,
        valid: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """One new token per row, using and updating the cache in place.

        x: (B, 1, D); k_cache, v_cache: (B, H, S, hd); slot: (B,) long, where each row's new
        key/value is written; valid: (B, 1, 1, S) bool, cache slots the row may attend to
        (its own past tokens + the slot being written now). With RoPE the cache holds rotated keys.
        """
        q, k, v = self._qkv(x, rope)  # (B, H, 1, hd)
        rows = torch.arange(x.shape[0], device=x.device)
        k_cache[rows, :, slot] = k[:, :, 0].to(k_cache.dtype)  # (B, H, hd) written at (row, :, slot[row])
        v_cache[rows, :, slot] = v[:, :, 0].to(v_cache.dtype)
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=valid)  # (B, H, 1, hd)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FF(LN(x)).

    normformer_norms adds NormFormer's extra LayerNorms (Shleifer et al., 2021): on the
    attention output before the residual add, and after the FF activation.
    """

    def __init__(self, config: BlockConfig):
        super().__init__()
        d_model, d_ff, sigma_reparam = config.d_model, config.d_ff, config.sigma_reparam
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(d_model) if config.normformer_norms else nn.Identity()
        mid_norm = [nn.LayerNorm(d_ff)] if config.normformer_norms else []  # (keeps state_dict keys when off)
        self.ff = nn.Sequential(
            make_linear(d_model, d_ff, sigma_reparam), nn.GELU(), *mid_norm, make_linear(d_ff, d_model, sigma_reparam)
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:  # (B, L, D) -> (B, L, D)
        x = x + self.drop(self.attn_norm(self.attn(self.ln1(x), rope)))
        return x + self.drop(self.ff(self.ln2(x)))

    def step(
        self,
        x: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        slot: Tensor,
        valid: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:  # (B, 1, D)
        x = x + self.drop(self.attn_norm(self.attn.step(self.ln1(x), k_cache, v_cache, slot, valid, rope)))
        return x + self.drop(self.ff(self.ln2(x)))


# ---------------------------------------------------------------- rollout cache
@dataclass
class KVCache:
    """Rollout state for B parallel actors.

    k, v: (n_layers, B, H, S, hd) -- k[i] is layer i's (B, n_heads, max_seq_len, head_dim) cache.
    n:    (B,) long, tokens seen since the row's last reset (may exceed S; slots = n % S).
    x0:   (B, S, D) block inputs of the cached tokens (only kept for overflow="recompute").
    t:    (B, S) time indices of the cached tokens (only kept for overflow="recompute" with RoPE).
    last: (B, tstep_dim) the previous step's input (only kept with token_shift; unread where n == 0).
    """

    k: Tensor
    v: Tensor
    n: Tensor
    x0: Tensor | None = None
    t: Tensor | None = None
    last: Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self, dones: Tensor) -> None:  # dones: (B,) bool; stale entries are masked out, not zeroed
        self.n.masked_fill_(dones.to(self.n.device, torch.bool), 0)
