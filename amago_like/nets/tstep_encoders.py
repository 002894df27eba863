"""Timestep encoders: map one timestep (observation dict + previous action/reward)
to a flat embedding. Everything here acts independently on each (batch, time) entry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import gin
import gymnasium as gym
import torch
from einops import rearrange
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def make_mlp(d_in: int, d_hidden: int, d_out: int, n_layers: int, activation: str = "leaky_relu") -> nn.Sequential:
    """`n_layers` hidden (Linear -> activation) layers of width d_hidden, then a Linear to d_out."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_layers):
        layers += [nn.Linear(d, d_hidden), ACTIVATIONS[activation]()]
        d = d_hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


@gin.configurable
class RunningNorm(nn.Module):
    """Running mean / std normalisation over the last dim, statistics held in buffers.

    `update` merges a batch of samples into the statistics (Chan et al. parallel
    variance); `forward` only normalises. Buffers are saved in the state_dict and can be
    all-reduced by the caller for multi-process training (count-weighted).
    """

    def __init__(self, dim: int, eps: float = 1e-5, clip: float = 10.0):
        super().__init__()
        self.eps, self.clip = eps, clip
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # int: exact, immune to .to(dtype)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:  # x: (N, dim), only real samples
        n = x.shape[0]
        if n == 0:
            return
        x = x.double()
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        old_n, mean, var = self.count.double(), self.mean.double(), self.var.double()
        tot = old_n + n
        delta = b_mean - mean
        new_mean = mean + delta * (n / tot)
        m2 = var * old_n + b_var * n + delta.pow(2) * (old_n * n / tot)
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / tot)
        self.count.add_(n)

    def forward(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., dim)
        x = (x - self.mean) / torch.sqrt(self.var + self.eps)
        return x.clamp(-self.clip, self.clip)


class TstepEncoder(nn.Module, ABC):
    """Base class. forward(obs, rl2s) maps obs[k]: (B, L, *shape_k) and rl2s: (B, L, 1 + A)
    to (B, L, emb_dim)."""

    def __init__(self, obs_space: gym.spaces.Dict, rl2_space: gym.spaces.Box):
        super().__init__()
        self.obs_space = obs_space
        self.rl2_space = rl2_space

    @property
    @abstractmethod
    def emb_dim(self) -> int: ...

    @abstractmethod
    def forward(self, obs: dict[str, Tensor], rl2s: Tensor, pad_mask: Tensor | None = None) -> Tensor: ...


@gin.configurable
class FFTstepEncoder(TstepEncoder):
    """Flatten + concatenate every obs key (sorted) and rl2s, optionally normalise with
    running statistics, then MLP -> LayerNorm."""

    def __init__(
        self,
        obs_space: gym.spaces.Dict,
        rl2_space: gym.spaces.Box,
        n_layers: int = 2,
        d_hidden: int = 256,
        d_output: int = 128,
        normalize_inputs: bool = True,
        activation: str = "leaky_relu",
    ):
        super().__init__(obs_space, rl2_space)
        self.keys = sorted(obs_space.spaces.keys())
        d_in = sum(math.prod(obs_space[k].shape) for k in self.keys) + math.prod(rl2_space.shape)
        self.norm = RunningNorm(d_in) if normalize_inputs else None
        self.mlp = make_mlp(d_in, d_hidden, d_output, n_layers, activation)
        self.out_norm = nn.LayerNorm(d_output)
        self._emb_dim = d_output

    @property
    def emb_dim(self) -> int:
        return self._emb_dim

    def flatten_inputs(self, obs: dict[str, Tensor], rl2s: Tensor) -> Tensor:
        B, L = rl2s.shape[:2]
        parts = [obs[k].reshape(B, L, -1).float() for k in self.keys]
        return torch.cat(parts + [rl2s.float()], dim=-1)  # (B, L, d_in)

    def forward(self, obs: dict[str, Tensor], rl2s: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """pad_mask: optional (B, L, 1) bool, True = real timestep. Padded timesteps never
        enter the running statistics (which update in training mode only)."""
        x = self.flatten_inputs(obs, rl2s)  # (B, L, d_in)
        if self.norm is not None:
            if self.training:
                flat = rearrange(x, "b l d -> (b l) d")
                if pad_mask is not None:
                    flat = flat[rearrange(pad_mask, "b l 1 -> (b l)").bool()]
                self.norm.update(flat)
            x = self.norm(x)
        return self.out_norm(self.mlp(x))  # (B, L, d_output)
