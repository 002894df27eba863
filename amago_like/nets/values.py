"""Value tools for the critics: PopArt normalisation, classification ("binned") values and n-step TD targets."""

from __future__ import annotations

import gin
import torch
import torch.distributed as dist
from torch import Tensor, nn

from amago_like.nets.heads import EnsembleLinear


# ---------------------------------------------------------------- PopArt
@gin.configurable
class PopArt(nn.Module):
    """Per-gamma running mean / std of TD targets; critics predict normalised values.

    Q = std * n + mean, where n is the critic's output. ``update`` moves the statistics towards
    a batch of targets (exponential average with step max(beta, 1 / num_updates), i.e. an exact
    average over the first 1 / beta updates) and returns the old statistics, so the caller can
    ``rescale_`` the critics' last layer and keep every unnormalised prediction unchanged
    ("preserving outputs precisely", van Hasselt et al., 2016).
    """

    def __init__(self, num_gammas: int, beta: float = 5e-4, min_std: float = 1e-2, max_std: float = 1e6):
        super().__init__()
        self.beta, self.min_std, self.max_std = beta, min_std, max_std
        self.register_buffer("mean", torch.zeros(num_gammas))  # (G,)
        self.register_buffer("sq_mean", torch.ones(num_gammas))  # (G,) running E[y^2]
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def std(self) -> Tensor:  # (G,)
        var = self.sq_mean - self.mean**2
        return var.clamp(self.min_std**2, self.max_std**2).sqrt()

    def normalize(self, y: Tensor) -> Tensor:  # (..., G)
        return (y - self.mean) / self.std

    def unnormalize(self, n: Tensor) -> Tensor:  # (..., G)
        return n * self.std + self.mean

    @torch.no_grad()
    def update(self, targets: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Merge targets (..., G) at the positions where mask (..., 1) is true into the
        statistics; returns the old (mean, std).

        Under torch.distributed the batch sums are all-reduced, so every process keeps the
        same statistics (every process must call this, even with nothing to add). A batch
        with a non-finite target changes nothing.
        """
        old_mean, old_std = self.mean.clone(), self.std
        y = targets.double().flatten(0, -2)  # (N, G)
        m = torch.ones_like(y[:, :1]) if mask is None else mask.double().expand(*targets.shape[:-1], 1).flatten(0, -2)
        y = torch.where(m > 0, y, 0.0)  # padded entries may hold anything, even inf
        sums = torch.cat([y.sum(0), (y**2).sum(0), m.sum(0)])  # (2G + 1,)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        sums = torch.where(torch.isfinite(sums).all(), sums, 0.0)  # a non-finite batch is skipped whole
        G, n = self.mean.shape[0], sums[-1]
        # no host sync: an empty batch gets step 0 instead of an early return
        step = torch.where(n > 0, (1.0 / (self.updates + 1).double()).clamp(min=self.beta), 0.0)
        n = n.clamp(min=1.0)
        self.mean.add_((step * (sums[:G] / n - self.mean)).to(self.mean.dtype))
        self.sq_mean.add_((step * (sums[G : 2 * G] / n - self.sq_mean)).to(self.sq_mean.dtype))
        self.updates.add_((sums[-1] > 0).long())
        return old_mean, old_std

    @torch.no_grad()
    def rescale_(self, layer: EnsembleLinear, old_mean: Tensor, old_std: Tensor) -> None:
        """Rescale an output layer of (C, d, K * G) units, K groups of one per gamma (K actions of a per-action
        critic, or 1), so that std * out + mean is what it was before ``update``."""
        new_mean, new_std = self.mean, self.std
        G = new_mean.shape[0]
        weight, bias = layer.weight.unflatten(-1, (-1, G)), layer.bias.unflatten(-1, (-1, G))  # views
        weight.mul_(old_std / new_std)  # (C, d, K, G) * (G,)
        bias.copy_((old_std * bias + old_mean - new_mean) / new_std)  # (C, 1, K, G)


# ---------------------------------------------------------------- classification values
def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class ValueBins(nn.Module):
    """``num_bins`` evenly spaced bin centres on [-limit, limit] (in symlog space) and the
    target distributions that encode a scalar on them.

    two_hot:  the two neighbouring bins, weighted so that the expected bin value is the scalar.
    hl_gauss: a Gaussian of std ``sigma * bin width`` around the scalar, integrated over each
              bin (edges halfway between centres) and renormalised (Imani & White, 2018;
              Farebrother et al., 2024).
    Scalars outside [-limit, limit] are clipped to the range first.
    """

    def __init__(self, num_bins: int = 128, limit: float = 10.0, sigma: float = 0.75):
        super().__init__()
        if num_bins < 2 or not sigma > 0:
            raise ValueError(f"need num_bins >= 2 and sigma > 0, got {num_bins}, {sigma}")
        self.num_bins, self.limit, self.sigma = num_bins, limit, sigma
        self.width = 2 * limit / (num_bins - 1)
        self.register_buffer("centers", torch.linspace(-limit, limit, num_bins), persistent=False)  # (K,)
        edges = torch.linspace(-limit - self.width / 2, limit + self.width / 2, num_bins + 1)
        self.register_buffer("edges", edges, persistent=False)  # (K + 1,)

    def two_hot(self, x: Tensor) -> Tensor:  # (...) -> (..., K)
        x = x.float().clamp(-self.limit, self.limit)
        lo = ((x + self.limit) / self.width).floor().long().clamp(0, self.num_bins - 2)  # (...)
        w_hi = ((x - self.centers[lo]) / self.width).clamp(0.0, 1.0).unsqueeze(-1)  # (..., 1)
        out = torch.zeros(*x.shape, self.num_bins, device=x.device)
        out.scatter_(-1, lo.unsqueeze(-1), 1.0 - w_hi)
        return out.scatter_add_(-1, lo.unsqueeze(-1) + 1, w_hi)

    def hl_gauss(self, x: Tensor) -> Tensor:  # (...) -> (..., K)
        x = x.float().clamp(-self.limit, self.limit).unsqueeze(-1)  # (..., 1)
        cdf = torch.special.ndtr((self.edges - x) / (self.sigma * self.width))  # (..., K + 1)
        mass = cdf[..., 1:] - cdf[..., :-1]  # (..., K)
        return mass / (cdf[..., -1:] - cdf[..., :1]).clamp(min=1e-12)

    def decode(self, probs: Tensor) -> Tensor:  # (..., K) -> (...) expected bin value
        return (probs * self.centers).sum(-1)


# ---------------------------------------------------------------- TD targets
def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the positions where mask (broadcastable to x) is true."""
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def n_step_targets(
    rews: torch.Tensor, dones: torch.Tensor, real: torch.Tensor, v_next: torch.Tensor, gammas: torch.Tensor, n: int
) -> torch.Tensor:
    """TD targets (B, T, G) that sum up to n rewards before bootstrapping: rews, dones (B, T, 1) float, real
    (B, T, 1) bool (a prefix of each row), v_next (B, T, G) = V(s_{t+1}), gammas (G,). A sum stops early at a
    done (no bootstrap) or before the window's first padded transition (bootstrapping from the last real one)."""

    def ahead(x: torch.Tensor, k: int) -> torch.Tensor:  # x[:, t + k] at t, zeros past the end
        return torch.cat([x[:, k:], torch.zeros_like(x[:, :k])], 1)

    ret, boot = torch.zeros_like(v_next), torch.zeros_like(v_next)
    real = real.to(rews.dtype)
    going = torch.ones_like(rews)  # (B, T, 1): steps t .. t+k-1 were real and none ended the episode
    for k in range(n):
        take = going * ahead(real, k)  # (B, T, 1): step t+k joins the sum
        ret = ret + take * gammas**k * ahead(rews, k)
        not_done = 1.0 - ahead(dones, k)
        boot = torch.where(take.bool(), gammas ** (k + 1) * not_done * ahead(v_next, k), boot)
        going = take * not_done
    return ret + boot
