"""Actor and critic heads over the trajectory encoder's states, and the policy distributions."""

from __future__ import annotations

import math

import gin
import torch
import torch.nn.functional as F
from torch import nn


def mlp(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.LeakyReLU()]
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class TanhGaussian:
    """Gaussian squashed by tanh into (-1, 1), with the change-of-variables log-prob."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.std = mean, log_std.exp()
        self.normal = torch.distributions.Normal(mean, self.std)

    def rsample(self, n: int) -> torch.Tensor:
        return torch.tanh(self.normal.rsample((n,)))  # (n, *batch, A)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        a = action.clamp(-1 + 1e-5, 1 - 1e-5)
        u = torch.atanh(a)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable
        log_det = 2 * (math.log(2) - u - F.softplus(-2 * u))
        return (self.normal.log_prob(u) - log_det).sum(-1)

    def entropy_estimate(self) -> torch.Tensor:
        """Entropy of the pre-tanh Gaussian (an upper bound; used only as a regulariser)."""
        return self.normal.entropy().sum(-1)

    def mode(self) -> torch.Tensor:
        return torch.tanh(self.mean)


@gin.configurable
class Actor(nn.Module):
    """state (..., D) -> a Categorical (discrete) or TanhGaussian (continuous) policy."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        discrete: bool,
        hidden: tuple[int, ...] = (256, 256),
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
    ):
        super().__init__()
        self.discrete, self.action_dim, self.log_std_bounds = discrete, action_dim, log_std_bounds
        self.net = mlp(state_dim, hidden, action_dim if discrete else 2 * action_dim)

    def forward(self, state: torch.Tensor):
        out = self.net(state).float()  # distributions in fp32 under autocast
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        mean, log_std = out.chunk(2, dim=-1)
        lo, hi = self.log_std_bounds
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(log_std) + 1)
        return TanhGaussian(mean, log_std)


class EnsembleLinear(nn.Module):
    """C independent linear layers applied in one batched matmul: (C, N, d_in) -> (C, N, d_out)."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


@gin.configurable
class CriticEnsemble(nn.Module):
    """C critics Q(s, a), each with one output per discount factor: -> (C, ..., G)."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        num_gammas: int,
        num_critics: int = 2,
        hidden: tuple[int, ...] = (256, 256),
    ):
        super().__init__()
        self.num_critics = num_critics
        dims = [state_dim + action_dim, *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(num_critics, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.out = EnsembleLinear(num_critics, dims[-1], num_gammas)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # state (..., D) and action (..., A) share leading dims
        lead = torch.broadcast_shapes(state.shape[:-1], action.shape[:-1])
        x = torch.cat([state.expand(*lead, -1), action.to(state.dtype).expand(*lead, -1)], dim=-1)
        x = x.reshape(1, -1, x.shape[-1]).expand(self.num_critics, -1, -1)  # (C, N, D+A)
        for layer in self.layers:
            x = F.leaky_relu(layer(x))
        return self.out(x).reshape(self.num_critics, *lead, -1).float()  # (C, ..., G)
