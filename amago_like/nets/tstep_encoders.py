"""Timestep encoders: map one timestep (observation dict + previous action/reward)
to a flat embedding. Everything here acts independently on each (batch, time) entry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import gin
import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn

from amago_like.checks import check_ints
from amago_like.nets.mlp import mlp


@gin.configurable
class RunningNorm(nn.Module):
    """Running mean / std normalisation over the last dim, statistics held in buffers.

    `update` merges a batch of samples into the statistics (Chan et al. parallel
    variance); `forward` only normalises. Under torch.distributed the batch sums are
    all-reduced, so every process merges the samples of all processes and the statistics
    stay identical.
    """

    def __init__(self, dim: int, eps: float = 1e-5, clip: float = 10.0):
        super().__init__()
        self.eps, self.clip = eps, clip
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # int: exact, immune to .to(dtype)

    @torch.no_grad()
    def update(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Merge the samples of x (..., dim) where mask (..., 1) is true (default: every sample).

        Masked sums rather than selecting rows: no wait for the device, and a batch with no
        real sample leaves the statistics as they were. Under torch.distributed every process
        must call this, even with nothing to add.
        """
        old_n, mean, var = self.count.double(), self.mean.double(), self.var.double()
        x = x.reshape(-1, x.shape[-1]).double()  # (N, dim)
        w = torch.ones_like(x[:, :1]) if mask is None else mask.reshape(-1, 1).double()  # (N, 1)
        d = torch.where(w > 0, x - mean, 0.0)  # centred on the running mean; padded rows may hold anything
        sums = torch.cat([d.sum(0), (d * d).sum(0), w.sum(0)])  # (2 dim + 1,)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        dim, n = mean.shape[0], sums[-1]
        delta = sums[:dim] / n.clamp(min=1)  # (dim,) batch mean - running mean
        b_var = (sums[dim : 2 * dim] / n.clamp(min=1) - delta**2).clamp(min=0)
        tot = (old_n + n).clamp(min=1)
        m2 = var * old_n + b_var * n + delta.pow(2) * (old_n * n / tot)
        self.mean.copy_(torch.where(n > 0, mean + delta * (n / tot), mean))
        self.var.copy_(torch.where(n > 0, m2 / tot, var))
        self.count.add_(n.long())

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
        check_ints("FFTstepEncoder", 1, n_layers=n_layers, d_hidden=d_hidden, d_output=d_output)
        super().__init__(obs_space, rl2_space)
        self.keys = sorted(obs_space.spaces.keys())
        d_in = sum(math.prod(obs_space[k].shape) for k in self.keys) + math.prod(rl2_space.shape)
        self.norm = RunningNorm(d_in) if normalize_inputs else None
        self.mlp = mlp(d_in, (d_hidden,) * n_layers, d_output, activation)
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
                self.norm.update(x, pad_mask)
            x = self.norm(x)
        return self.out_norm(self.mlp(x))  # (B, L, d_output)


# ---------------------------------------------------------------- image observations
class NatureCNN(nn.Module):
    """The DQN (Mnih et al., 2015) conv stack: (N, C, H, W) -> (N, flat)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _ImpalaResidual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class ImpalaCNN(nn.Module):
    """IMPALA's residual conv stack (Espeholt et al., 2018): per stage conv -> max-pool /2 ->
    two residual blocks; (N, C, H, W) -> (N, flat)."""

    def __init__(self, channels: int, stage_channels: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        stages: list[nn.Module] = []
        for c in stage_channels:
            stages += [
                nn.Conv2d(channels, c, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                _ImpalaResidual(c),
                _ImpalaResidual(c),
            ]
            channels = c
        self.net = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


CNNS: dict[str, type[nn.Module]] = {"nature": NatureCNN, "impala": ImpalaCNN}


@gin.configurable
class CNNTstepEncoder(TstepEncoder):
    """A conv net over one image key (uint8 (H, W, C), scaled to [0, 1]) -> Linear to d_image,
    concatenated with the other keys (flattened, optionally normalised with running statistics)
    and rl2s -> MLP -> LayerNorm.

    image_key=None picks the only uint8 key of rank 3. With a pad_mask, the conv net runs on
    real timesteps only; padded timesteps get zero image features.
    """

    def __init__(
        self,
        obs_space: gym.spaces.Dict,
        rl2_space: gym.spaces.Box,
        image_key: str | None = None,
        cnn: str = "nature",
        d_image: int = 256,
        n_layers: int = 1,
        d_hidden: int = 256,
        d_output: int = 128,
        normalize_inputs: bool = True,
        activation: str = "leaky_relu",
    ):
        super().__init__(obs_space, rl2_space)
        if image_key is None:
            found = [k for k, s in obs_space.spaces.items() if s.dtype == np.uint8 and len(s.shape) == 3]
            if len(found) != 1:
                raise ValueError(f"set image_key: found {len(found)} uint8 (H, W, C) keys {found}")
            image_key = found[0]
        if cnn not in CNNS:
            raise ValueError(f"cnn must be one of {sorted(CNNS)}, got {cnn!r}")
        self.image_key = image_key
        H, W, C = obs_space[image_key].shape
        self.cnn = CNNS[cnn](C)
        with torch.no_grad():
            n_flat = self.cnn(torch.zeros(1, C, H, W)).shape[-1]
        self.img_proj = nn.Sequential(nn.Linear(n_flat, d_image), nn.ReLU())
        self.keys = sorted(k for k in obs_space.spaces if k != image_key)
        d_vec = sum(math.prod(obs_space[k].shape) for k in self.keys) + math.prod(rl2_space.shape)
        self.norm = RunningNorm(d_vec) if normalize_inputs else None
        self.mlp = mlp(d_image + d_vec, (d_hidden,) * n_layers, d_output, activation)
        self.out_norm = nn.LayerNorm(d_output)
        self.d_image, self._emb_dim = d_image, d_output

    @property
    def emb_dim(self) -> int:
        return self._emb_dim

    def image_features(self, img: Tensor, pad_mask: Tensor | None) -> Tensor:  # (B, L, H, W, C) -> (B, L, d_image)
        B, L = img.shape[:2]
        frames = rearrange(img, "b l h w c -> (b l) c h w")
        if pad_mask is None:
            return rearrange(self.img_proj(self.cnn(frames.float() / 255.0)), "(b l) d -> b l d", b=B)
        real = rearrange(pad_mask, "b l 1 -> (b l)").bool()  # (B*L,)
        out = self.img_proj(self.cnn(frames[real].float() / 255.0))  # (R, d_image) for the R real frames
        feats = out.new_zeros(B * L, self.d_image)
        feats[real] = out
        return rearrange(feats, "(b l) d -> b l d", b=B)

    def forward(self, obs: dict[str, Tensor], rl2s: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """obs[image_key]: (B, L, H, W, C) uint8; pad_mask: optional (B, L, 1) bool, True = real."""
        B, L = rl2s.shape[:2]
        vec = torch.cat([obs[k].reshape(B, L, -1).float() for k in self.keys] + [rl2s.float()], dim=-1)
        if self.norm is not None:
            if self.training:
                self.norm.update(vec, pad_mask)
            vec = self.norm(vec)
        img = self.image_features(obs[self.image_key], pad_mask)  # (B, L, d_image)
        return self.out_norm(self.mlp(torch.cat([img, vec.to(img.dtype)], dim=-1)))  # (B, L, d_output)
