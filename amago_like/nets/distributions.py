"""Policy distributions with one small interface, shared by every action space.

Every class here has
    sample(n)   -> (n, *batch, A) or (n, *batch) for Discrete  (no gradient)
    rsample(n)  -> like sample(n), with gradients to the parameters (continuous / multi-binary)
    log_prob(a) -> (*batch)   joint over action dims
    entropy()   -> (*batch)   exact where a closed form exists, else a one-sample (reparameterised) estimate
    mode()      -> the most likely action (for greedy rollouts)

Continuous actions live in [-1, 1]^A; multi-binary actions are {0, 1}^A floats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Beta, Normal

_EPS = 1e-6


def tanh_log_det(u: Tensor) -> Tensor:
    """log |d tanh(u) / du| = 2 (log 2 - u - softplus(-2u)), stable for large |u|."""
    return 2 * (math.log(2) - u - F.softplus(-2 * u))


def safe_atanh(a: Tensor) -> Tensor:
    return torch.atanh(a.clamp(-1 + 1e-5, 1 - 1e-5))


class Discrete:
    """Categorical over A actions; actions are integer indices."""

    def __init__(self, logits: Tensor):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # (*batch, A) normalised log-probs

    @property
    def probs(self) -> Tensor:  # (*batch, A)
        return self.logits.exp()

    def sample(self, n: int | None = None) -> Tensor:
        """(n, *batch) long, or (*batch) when n is None."""
        flat = torch.multinomial(self.probs.reshape(-1, self.logits.shape[-1]), 1 if n is None else n, True)
        if n is None:
            return flat.view(self.logits.shape[:-1])
        return flat.T.reshape(n, *self.logits.shape[:-1])

    def log_prob(self, action: Tensor) -> Tensor:  # (..., *batch) long -> (..., *batch)
        logits = self.logits.expand(*action.shape, self.logits.shape[-1])
        return logits.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum(-1)

    def mode(self) -> Tensor:
        return self.logits.argmax(-1)


class _TanhSquashed:
    """A distribution over pre-tanh values u, squashed by tanh into (-1, 1). Subclasses give
    ``_rsample_u(n)`` (n, *batch, A) and ``_log_prob_u(u)`` (log-density of a = tanh(u), (...))."""

    def _rsample_u(self, n: int) -> Tensor:
        raise NotImplementedError

    def _log_prob_u(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def rsample(self, n: int) -> Tensor:
        return torch.tanh(self._rsample_u(n))  # (n, *batch, A)

    def sample(self, n: int) -> Tensor:
        with torch.no_grad():
            return self.rsample(n)

    def log_prob(self, action: Tensor) -> Tensor:
        return self._log_prob_u(safe_atanh(action))

    def entropy(self, n: int = 1) -> Tensor:
        """-E log pi(a), estimated from n reparameterised samples (log-prob taken before the tanh)."""
        return -self._log_prob_u(self._rsample_u(n)).mean(0)


class TanhGaussian(_TanhSquashed):
    """Diagonal Gaussian squashed by tanh into (-1, 1), with the change-of-variables log-prob."""

    def __init__(self, mean: Tensor, log_std: Tensor):
        self.mean, self.std = mean, log_std.exp()  # (*batch, A)
        self.normal = Normal(mean, self.std, validate_args=False)  # (validation syncs the GPU)

    def _log_prob_u(self, u: Tensor) -> Tensor:  # pre-tanh (..., A) -> (...)
        return (self.normal.log_prob(u) - tanh_log_det(u)).sum(-1)

    def _rsample_u(self, n: int) -> Tensor:
        return self.normal.rsample((n,))

    def mode(self) -> Tensor:
        return torch.tanh(self.mean)


class TanhGMM(_TanhSquashed):
    """Mixture of K diagonal Gaussians, squashed by tanh into (-1, 1).

    rsample picks a component (no gradient through that choice) and reparameterises within it,
    so the mixture weights learn only from log-prob terms (behaviour cloning, entropy).
    Its entropy has no closed form: it is always the sampled estimate.
    """

    def __init__(self, logits: Tensor, means: Tensor, log_stds: Tensor):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # (*batch, K)
        self.means, self.stds = means, log_stds.exp()  # (*batch, K, A)

    def _log_prob_u(self, u: Tensor) -> Tensor:  # pre-tanh (..., A) -> (...)
        comp = Normal(self.means, self.stds, validate_args=False).log_prob(u.unsqueeze(-2)).sum(-1)  # (..., K)
        return (self.logits + comp).logsumexp(-1) - tanh_log_det(u).sum(-1)

    def _rsample_u(self, n: int) -> Tensor:
        k = torch.distributions.Categorical(logits=self.logits, validate_args=False).sample((n,))  # (n, *batch)
        idx = k[..., None, None].expand(*k.shape, 1, self.means.shape[-1])  # (n, *batch, 1, A)
        mean = self.means.expand(n, *self.means.shape).gather(-2, idx).squeeze(-2)  # (n, *batch, A)
        std = self.stds.expand(n, *self.stds.shape).gather(-2, idx).squeeze(-2)
        return mean + std * torch.randn_like(mean)

    def mode(self) -> Tensor:
        """tanh of the most likely component's mean (the mixture's mode is not closed-form)."""
        k = self.logits.argmax(-1)  # (*batch)
        idx = k[..., None, None].expand(*k.shape, 1, self.means.shape[-1])
        return torch.tanh(self.means.gather(-2, idx).squeeze(-2))


class ScaledBeta:
    """Independent Beta(alpha, beta) per action dim, mapped affinely from (0, 1) to (-1, 1)."""

    def __init__(self, alpha: Tensor, beta: Tensor):
        self.alpha, self.beta = alpha, beta  # (*batch, A), both > 0
        self.base = Beta(alpha, beta, validate_args=False)

    def rsample(self, n: int) -> Tensor:
        return 2 * self.base.rsample((n,)) - 1  # (n, *batch, A)

    def sample(self, n: int) -> Tensor:
        with torch.no_grad():
            return self.rsample(n)

    def log_prob(self, action: Tensor) -> Tensor:
        x = ((action + 1) / 2).clamp(_EPS, 1 - _EPS)
        return (self.base.log_prob(x) - math.log(2)).sum(-1)

    def entropy(self) -> Tensor:
        return (self.base.entropy() + math.log(2)).sum(-1)

    def mode(self) -> Tensor:
        """(alpha - 1) / (alpha + beta - 2) for alpha, beta > 1; the mean otherwise."""
        a, b = self.alpha, self.beta
        unimodal = (a > 1) & (b > 1)
        x = torch.where(unimodal, (a - 1) / (a + b - 2).clamp(min=_EPS), a / (a + b))
        return 2 * x - 1


class MultiBinary:
    """Independent Bernoulli per action dim; actions are {0, 1} floats.

    rsample uses the straight-through estimator: the forward value is the sample, the
    gradient is that of the probabilities.
    """

    def __init__(self, logits: Tensor):
        self.logits = logits  # (*batch, A)

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, n: int) -> Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(n, *self.logits.shape))  # (n, *batch, A)

    def rsample(self, n: int) -> Tensor:
        p = self.probs
        return self.sample(n) + (p - p.detach())  # exactly the sample in value

    def log_prob(self, action: Tensor) -> Tensor:  # (..., *batch, A) -> (..., *batch)
        logits, action = torch.broadcast_tensors(self.logits, action.to(self.logits.dtype))
        return -F.binary_cross_entropy_with_logits(logits, action, reduction="none").sum(-1)

    def entropy(self) -> Tensor:
        p = self.probs
        return F.binary_cross_entropy_with_logits(self.logits, p, reduction="none").sum(-1)

    def mode(self) -> Tensor:
        return (self.logits > 0).to(self.logits.dtype)


PolicyDist = Discrete | TanhGaussian | TanhGMM | ScaledBeta | MultiBinary
