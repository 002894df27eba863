"""Trajectory encoders: sequence models over timestep embeddings.

forward(seq, time_idxs, hidden_state)
  training: seq (B, L, tstep_dim), time_idxs (B, L, 1), hidden_state None -> ((B, L, emb_dim), None)
  rollout:  seq (B, 1, tstep_dim), time_idxs (B, 1, 1), hidden_state    -> ((B, 1, emb_dim), new_state)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gin
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amago_like.checks import check_below_one, check_int, check_ints
from amago_like.nets.mlp import mlp
from amago_like.nets.transformer import BlockConfig, FixedPosEmb, KVCache, LearnedPosEmb, RotaryEmb, TransformerBlock


def _as_bool_tensor(dones: np.ndarray | Tensor, device: torch.device) -> Tensor:  # -> (B,) bool
    if not isinstance(dones, Tensor):
        dones = torch.from_numpy(np.asarray(dones, dtype=bool))
    return dones.to(device=device, dtype=torch.bool).reshape(-1)


class TrajEncoder(nn.Module, ABC):
    """Base class; see the module docstring for the forward contract."""

    def __init__(self, tstep_dim: int, max_seq_len: int):
        super().__init__()
        self.tstep_dim = tstep_dim
        self.max_seq_len = max_seq_len

    @property
    @abstractmethod
    def emb_dim(self) -> int: ...

    def init_hidden_state(self, batch_size: int, device: torch.device) -> Any:
        return None

    def reset_hidden_state(self, hidden_state: Any, dones: np.ndarray | Tensor) -> Any:
        return hidden_state

    @abstractmethod
    def forward(self, seq: Tensor, time_idxs: Tensor, hidden_state: Any = None) -> tuple[Tensor, Any]: ...


@gin.configurable
class FFTrajEncoder(TrajEncoder):
    """Per-timestep MLP -> LayerNorm; no memory (hidden state is always None)."""

    def __init__(
        self,
        tstep_dim: int,
        max_seq_len: int,
        d_hidden: int = 256,
        n_layers: int = 2,
        d_output: int = 256,
        activation: str = "leaky_relu",
    ):
        check_ints("FFTrajEncoder", 1, d_hidden=d_hidden, n_layers=n_layers, d_output=d_output)
        super().__init__(tstep_dim, max_seq_len)
        self.mlp = mlp(tstep_dim, (d_hidden,) * n_layers, d_output, activation)
        self.ln = nn.LayerNorm(d_output)
        self._emb_dim = d_output

    @property
    def emb_dim(self) -> int:
        return self._emb_dim

    def forward(self, seq: Tensor, time_idxs: Tensor, hidden_state: Any = None) -> tuple[Tensor, None]:
        return self.ln(self.mlp(seq)), None  # (B, L, d_output)


@gin.configurable
class GRUTrajEncoder(TrajEncoder):
    """nn.GRU -> Linear -> LayerNorm. Rollout state: (n_layers, B, d_hidden)."""

    def __init__(self, tstep_dim: int, max_seq_len: int, d_hidden: int = 256, n_layers: int = 2, d_output: int = 256):
        check_ints("GRUTrajEncoder", 1, d_hidden=d_hidden, n_layers=n_layers, d_output=d_output)
        super().__init__(tstep_dim, max_seq_len)
        self.n_layers, self.d_hidden = n_layers, d_hidden
        self.gru = nn.GRU(tstep_dim, d_hidden, num_layers=n_layers, batch_first=True)
        self.out = nn.Linear(d_hidden, d_output)
        self.ln = nn.LayerNorm(d_output)
        self._emb_dim = d_output

    @property
    def emb_dim(self) -> int:
        return self._emb_dim

    def init_hidden_state(self, batch_size: int, device: torch.device) -> Tensor:
        return torch.zeros(self.n_layers, batch_size, self.d_hidden, device=device)  # (n_layers, B, d_hidden)

    def reset_hidden_state(self, hidden_state: Tensor, dones: np.ndarray | Tensor) -> Tensor:
        keep = ~_as_bool_tensor(dones, hidden_state.device)  # (B,)
        return hidden_state * keep[None, :, None].to(hidden_state.dtype)

    def forward(
        self, seq: Tensor, time_idxs: Tensor, hidden_state: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        y, h = self.gru(seq, hidden_state)  # (B, L, d_hidden), (n_layers, B, d_hidden)
        return self.ln(self.out(y)), (h if hidden_state is not None else None)


@gin.configurable
class IdentityTrajEncoder(TrajEncoder):
    """No sequence model: passes the timestep embedding through (a memoryless policy)."""

    @property
    def emb_dim(self) -> int:
        return self.tstep_dim

    def forward(self, seq: Tensor, time_idxs: Tensor, hidden_state: Any = None) -> tuple[Tensor, None]:
        return seq, None  # (B, L, tstep_dim)


@gin.configurable
class TformerTrajEncoder(TrajEncoder):
    """Causal pre-norm transformer over timestep embeddings.

    Input projection (+ positional embedding of the global time index) -> blocks -> LayerNorm.
    Rollouts use a ring-buffer KVCache of max_seq_len tokens per actor.

    Options:
      pos_emb:          "fixed" (sinusoidal, the default), "learned" (a trained row per time index)
                        -- both added to the input -- or "rope" (rotary, on queries and keys inside
                        attention; the cache stores rotated keys). A learned table trains each row only
                        from the time indices that batches happen to contain, and holds max_time_idx rows
                        (most of a small model's parameters); the fixed one needs no training.
      normformer_norms: NormFormer's extra LayerNorms (after attention, inside the FF block).
      sigma_reparam:    sigmaReparam linears in every block (W' = gamma / sigma(W) * W).
      token_shift:      each token's input also carries the previous timestep's (zeros at the start of a
                        trajectory and of a training window), through its own linear map: a token then holds
                        a whole transition (observation before and after, action, reward), so that hidden
                        dynamics can be read off one token instead of a comparison of two by attention.
                        The map starts at zero, so a new encoder is the one without the option. On by
                        default (docs/RESULTS.md items 84-85 give the suite figures behind it). Rollouts
                        keep the previous input in the cache; a training window that starts mid-trajectory
                        cannot see its first token's predecessor, where a rollout can.
      attention_window: sliding-window causal attention (each token sees itself and the
                        window - 1 tokens before it); the rollout cache then keeps only the last
                        window tokens, and rollouts equal a full (windowed) forward over the whole
                        history, at any depth.

    overflow decides what happens once an actor has seen more than max_seq_len tokens:
      "slide":     drop the oldest cached K/V (O(S) per step). Exact vs. a full forward over
                   the last max_seq_len timesteps only when n_layers == 1: with more layers
                   the cached upper-layer K/V of the oldest kept tokens were computed while
                   even older tokens were still in context.
      "recompute": rows past the limit re-run the blocks over their stored window
                   (O(S^2) for those rows) -- exactly matches the full-forward window.
                   Not available with an attention_window shorter than max_seq_len.
    Rollout steps are inference-only (no gradients) and attend to all cached tokens, i.e.
    they are causal even when causal=False.
    """

    def __init__(
        self,
        tstep_dim: int,
        max_seq_len: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 8,
        d_ff: int = 512,
        dropout: float = 0.05,
        attn_dropout: float = 0.0,
        pos_emb: str = "fixed",
        max_time_idx: int = 5000,
        causal: bool = True,
        overflow: str = "slide",
        normformer_norms: bool = False,
        sigma_reparam: bool = False,
        attention_window: int | None = None,
        rope_base: float = 10000.0,
        token_shift: bool = True,
    ):
        check_ints("TformerTrajEncoder", 1, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff)
        check_ints("TformerTrajEncoder", 1, max_time_idx=max_time_idx)
        check_int("TformerTrajEncoder.attention_window", attention_window, minimum=1, allow_none=True)
        check_below_one("TformerTrajEncoder.dropout", dropout)
        check_below_one("TformerTrajEncoder.attn_dropout", attn_dropout)
        if d_model % n_heads:
            raise ValueError(
                f"TformerTrajEncoder.d_model ({d_model}) must be divisible by TformerTrajEncoder.n_heads ({n_heads})"
            )
        super().__init__(tstep_dim, max_seq_len)
        pos_embs = {"learned": LearnedPosEmb, "fixed": FixedPosEmb, "rope": None}
        if pos_emb not in pos_embs:
            raise ValueError(f"pos_emb must be one of {sorted(pos_embs)}, got {pos_emb!r}")
        if overflow not in ("slide", "recompute"):
            raise ValueError(f"overflow must be 'slide' or 'recompute', got {overflow!r}")
        self.window = attention_window if attention_window is not None and attention_window < max_seq_len else None
        if self.window is not None and overflow == "recompute":
            raise ValueError("overflow='recompute' cannot be combined with an attention_window < max_seq_len")
        self.d_model, self.n_heads, self.overflow = d_model, n_heads, overflow
        self.inp = nn.Linear(tstep_dim, d_model)
        self.pos = None if pos_emb == "rope" else pos_embs[pos_emb](d_model, max_time_idx)
        self.rope = RotaryEmb(d_model // n_heads, rope_base) if pos_emb == "rope" else None
        self.drop = nn.Dropout(dropout)
        block = BlockConfig(
            d_model=d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            dropout=dropout,
            attn_dropout=attn_dropout,
            causal=causal,
            normformer_norms=normformer_norms,
            sigma_reparam=sigma_reparam,
            window=self.window,
        )
        self.blocks = nn.ModuleList(TransformerBlock(block) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        # built last, so that every other module initialises as it does without it; zero at the start, so that the
        # encoder starts as it would without the shift and learns how much of the previous input to take in
        self.shift = nn.Linear(tstep_dim, d_model, bias=False) if token_shift else None
        if self.shift is not None:
            nn.init.zeros_(self.shift.weight)

    @property
    def emb_dim(self) -> int:
        return self.d_model

    @property
    def cache_len(self) -> int:
        """Tokens kept per actor in the rollout cache."""
        return self.max_seq_len if self.window is None else self.window

    def _embed(self, seq: Tensor, time_idxs: Tensor, previous: Tensor | None = None) -> Tensor:
        """(B, L, tstep_dim), (B, L, 1) -> (B, L, D); ``previous``: each token's predecessor's input, with
        token_shift (default: the sequence shifted by one, zeros first)."""
        x = self.inp(seq)
        if self.shift is not None:
            x = x + self.shift(F.pad(seq[:, :-1], (0, 0, 1, 0)) if previous is None else previous)
        if self.pos is not None:
            x = x + self.pos(time_idxs[..., 0].long())
        return self.drop(x)

    def _rope(self, time_idxs: Tensor) -> tuple[Tensor, Tensor] | None:  # (B, L) -> 2 x (B, 1, L, hd/2)
        return None if self.rope is None else self.rope(time_idxs)

    def forward(
        self, seq: Tensor, time_idxs: Tensor, hidden_state: KVCache | None = None
    ) -> tuple[Tensor, KVCache | None]:
        if hidden_state is not None:
            return self._step(seq, time_idxs, hidden_state)
        x = self._embed(seq, time_idxs)  # (B, L, D)
        rope = self._rope(time_idxs[..., 0])
        for block in self.blocks:
            x = block(x, rope)
        return self.ln_f(x), None

    def init_hidden_state(self, batch_size: int, device: torch.device) -> KVCache:
        dtype = self.inp.weight.dtype
        S = self.cache_len
        shape = (len(self.blocks), batch_size, self.n_heads, S, self.d_model // self.n_heads)
        x0 = t = last = None
        if self.shift is not None:
            last = torch.zeros(batch_size, self.shift.in_features, device=device, dtype=dtype)
        if self.overflow == "recompute":
            x0 = torch.zeros(batch_size, S, self.d_model, device=device, dtype=dtype)
            if self.rope is not None:
                t = torch.zeros(batch_size, S, dtype=torch.long, device=device)
        return KVCache(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            n=torch.zeros(batch_size, dtype=torch.long, device=device),
            x0=x0,
            t=t,
            last=last,
        )

    def reset_hidden_state(self, hidden_state: KVCache, dones: np.ndarray | Tensor) -> KVCache:
        hidden_state.reset(_as_bool_tensor(dones, hidden_state.n.device))
        return hidden_state

    @torch.no_grad()
    def _step(self, seq: Tensor, time_idxs: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """One new token per actor; updates `cache` in place (inference only, no gradients)."""
        B, L, _ = seq.shape
        assert L == 1, "rollout with a KV cache takes exactly one timestep per call"
        S = cache.max_len
        rows_all = torch.arange(B, device=seq.device)
        slot = cache.n % S  # (B,) ring-buffer slot for the new token (overwrites the oldest when full)
        n_after = cache.n + 1
        valid = torch.arange(S, device=seq.device)[None, :] < n_after.clamp(max=S)[:, None]  # (B, S)
        valid = valid[:, None, None, :]  # (B, 1, 1, S) broadcast over heads and the single query

        previous = None
        if cache.last is not None:  # a row's first token after a reset has no predecessor
            previous = torch.where((cache.n == 0)[:, None, None], 0.0, cache.last[:, None].to(seq.dtype))
            cache.last.copy_(seq[:, 0])
        x = self._embed(seq, time_idxs, previous)  # (B, 1, D)
        t = time_idxs[..., 0].long()  # (B, 1)
        if cache.x0 is not None:
            cache.x0[rows_all, slot] = x[:, 0].to(cache.x0.dtype)
        if cache.t is not None:
            cache.t[rows_all, slot] = t[:, 0]
        rope = self._rope(t)
        for i, block in enumerate(self.blocks):
            x = block.step(x, cache.k[i], cache.v[i], slot, valid, rope)
        cache.n.add_(1)

        if cache.x0 is not None:
            rows = (n_after > S).nonzero().squeeze(1)  # (R,) rows whose window dropped tokens
            if rows.numel() > 0:
                order = (n_after[rows, None] + torch.arange(S, device=seq.device)) % S  # (R, S) oldest first
                y = cache.x0[rows[:, None], order]  # (R, S, D)
                rope_w = self._rope(cache.t[rows[:, None], order]) if cache.t is not None else None
                for block in self.blocks:
                    y = block(y, rope_w)
                x[rows] = y[:, -1:].to(x.dtype)
        return self.ln_f(x), cache
