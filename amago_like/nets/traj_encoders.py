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
from torch import Tensor, nn

from amago_like.nets.transformer import FixedPosEmb, KVCache, LearnedPosEmb, TransformerBlock
from amago_like.nets.tstep_encoders import make_mlp


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
        super().__init__(tstep_dim, max_seq_len)
        self.mlp = make_mlp(tstep_dim, d_hidden, d_output, n_layers, activation)
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
class TformerTrajEncoder(TrajEncoder):
    """Causal pre-norm transformer over timestep embeddings.

    Input projection + positional embedding of the global time index -> blocks -> LayerNorm.
    Rollouts use a ring-buffer KVCache of max_seq_len tokens per actor.

    overflow decides what happens once an actor has seen more than max_seq_len tokens:
      "slide":     drop the oldest cached K/V (O(S) per step). Exact vs. a full forward over
                   the last max_seq_len timesteps only when n_layers == 1: with more layers
                   the cached upper-layer K/V of the oldest kept tokens were computed while
                   even older tokens were still in context.
      "recompute": rows past the limit re-run the blocks over their stored window
                   (O(S^2) for those rows) -- exactly matches the full-forward window.
    Rollout steps are inference-only (no gradients) and attend to all cached tokens, i.e.
    they are causal even when causal=False.
    """

    def __init__(
        self,
        tstep_dim: int,
        max_seq_len: int,
        d_model: int = 128,
        n_layers: int = 3,
        n_heads: int = 8,
        d_ff: int = 512,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        pos_emb: str = "learned",
        max_time_idx: int = 5000,
        causal: bool = True,
        overflow: str = "slide",
    ):
        super().__init__(tstep_dim, max_seq_len)
        pos_embs = {"learned": LearnedPosEmb, "fixed": FixedPosEmb}
        if pos_emb not in pos_embs:
            raise ValueError(f"pos_emb must be one of {sorted(pos_embs)}, got {pos_emb!r}")
        if overflow not in ("slide", "recompute"):
            raise ValueError(f"overflow must be 'slide' or 'recompute', got {overflow!r}")
        self.d_model, self.n_heads, self.overflow = d_model, n_heads, overflow
        self.inp = nn.Linear(tstep_dim, d_model)
        self.pos = pos_embs[pos_emb](d_model, max_time_idx)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout, attn_dropout, causal) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)

    @property
    def emb_dim(self) -> int:
        return self.d_model

    def _embed(self, seq: Tensor, time_idxs: Tensor) -> Tensor:  # (B, L, tstep_dim), (B, L, 1) -> (B, L, D)
        return self.drop(self.inp(seq) + self.pos(time_idxs[..., 0].long()))

    def forward(
        self, seq: Tensor, time_idxs: Tensor, hidden_state: KVCache | None = None
    ) -> tuple[Tensor, KVCache | None]:
        if hidden_state is not None:
            return self._step(seq, time_idxs, hidden_state)
        x = self._embed(seq, time_idxs)  # (B, L, D)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x), None

    def init_hidden_state(self, batch_size: int, device: torch.device) -> KVCache:
        dtype = self.inp.weight.dtype
        shape = (len(self.blocks), batch_size, self.n_heads, self.max_seq_len, self.d_model // self.n_heads)
        x0 = None
        if self.overflow == "recompute":
            x0 = torch.zeros(batch_size, self.max_seq_len, self.d_model, device=device, dtype=dtype)
        return KVCache(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            n=torch.zeros(batch_size, dtype=torch.long, device=device),
            x0=x0,
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
        slot = cache.n % S  # (B,) ring-buffer slot for the new token (overwrites the oldest when full)
        n_after = cache.n + 1
        valid = torch.arange(S, device=seq.device)[None, :] < n_after.clamp(max=S)[:, None]  # (B, S)
        valid = valid[:, None, None, :]  # (B, 1, 1, S) broadcast over heads and the single query

        x = self._embed(seq, time_idxs)  # (B, 1, D)
        if cache.x0 is not None:
            cache.x0[torch.arange(B, device=seq.device), slot] = x[:, 0].to(cache.x0.dtype)
        for i, block in enumerate(self.blocks):
            x = block.step(x, cache.k[i], cache.v[i], slot, valid)
        cache.n.add_(1)

        if cache.x0 is not None:
            rows = (n_after > S).nonzero().squeeze(1)  # (R,) rows whose window dropped tokens
            if rows.numel() > 0:
                order = (n_after[rows, None] + torch.arange(S, device=seq.device)) % S  # (R, S) oldest first
                y = cache.x0[rows[:, None], order]  # (R, S, D)
                for block in self.blocks:
                    y = block(y)
                x[rows] = y[:, -1:].to(x.dtype)
        return self.ln_f(x), cache
