"""Actor and critic heads over the trajectory encoder's states."""

from __future__ import annotations

import math

import gin
import torch
import torch.nn.functional as F
from torch import nn

from amago_like.checks import check_below_one, check_int
from amago_like.nets.distributions import Discrete, MultiBinary, PolicyDist, ScaledBeta, TanhGaussian, TanhGMM
from amago_like.nets.mlp import mlp

__all__ = ["Actor", "CriticEnsemble", "EnsembleLinear", "TanhGaussian", "CONTINUOUS_DISTS"]

CONTINUOUS_DISTS = ("tanh_gaussian", "beta", "gmm")


@gin.configurable
class Actor(nn.Module):
    """state (..., D) -> a policy distribution (see nets/distributions.py).

    discrete -> Discrete (Categorical); multi_binary -> MultiBinary (independent Bernoulli);
    otherwise ``continuous_dist``: "tanh_gaussian", "beta" (affinely mapped to [-1, 1]) or
    "gmm" (``gmm_components`` tanh-squashed diagonal Gaussians).

    With ``num_gammas`` > 1 (set by the agent) the head outputs one policy per discount factor: the
    distribution's batch shape gains a gamma dimension, (..., G); ``gamma_index`` picks one policy.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        discrete: bool,
        hidden: tuple[int, ...] = (256, 256),
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
        continuous_dist: str = "tanh_gaussian",
        gmm_components: int = 4,
        multi_binary: bool = False,
        num_gammas: int = 1,
    ):
        super().__init__()
        if continuous_dist not in CONTINUOUS_DISTS:
            raise ValueError(f"continuous_dist must be one of {CONTINUOUS_DISTS}, got {continuous_dist!r}")
        self.discrete, self.multi_binary, self.action_dim = discrete, multi_binary, action_dim
        self.log_std_bounds, self.continuous_dist, self.k = log_std_bounds, continuous_dist, gmm_components
        if discrete or multi_binary:
            d_out = action_dim
        elif continuous_dist == "gmm":
            d_out = gmm_components * (1 + 2 * action_dim)
        else:
            d_out = 2 * action_dim
        self.num_gammas, self.d_out = num_gammas, d_out
        self.net = mlp(state_dim, hidden, num_gammas * d_out)

    def _log_std(self, raw: torch.Tensor) -> torch.Tensor:
        lo, hi = self.log_std_bounds
        return lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1)

    def forward(self, state: torch.Tensor, gamma_index: int | None = None) -> PolicyDist:
        out = self.net(state).float()  # distributions in fp32 under autocast; (..., G * d_out)
        if self.num_gammas > 1:
            out = out.unflatten(-1, (self.num_gammas, self.d_out))  # (..., G, d_out)
            if gamma_index is not None:
                out = out[..., gamma_index, :]  # (..., d_out)
        if self.discrete:
            return Discrete(out)
        if self.multi_binary:
            return MultiBinary(out)
        if self.continuous_dist == "tanh_gaussian":
            mean, log_std = out.chunk(2, dim=-1)  # (..., A) each
            return TanhGaussian(mean, self._log_std(log_std))
        if self.continuous_dist == "beta":
            a, b = out.chunk(2, dim=-1)
            return ScaledBeta(1.0 + F.softplus(a), 1.0 + F.softplus(b))  # concentrations > 1: unimodal
        logits, rest = out.split([self.k, 2 * self.k * self.action_dim], dim=-1)  # (..., K), (..., 2KA)
        mean, log_std = rest.unflatten(-1, (self.k, 2 * self.action_dim)).chunk(2, dim=-1)  # (..., K, A) each
        return TanhGMM(logits, mean, self._log_std(log_std))


class EnsembleLinear(nn.Module):
    """C independent linear layers applied in one batched matmul: (C, N, d_in) -> (C, N, d_out)."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """C independent LayerNorms over the last dim, each with its own gain and bias: (C, N, d) -> (C, N, d)."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, d))
        self.bias = nn.Parameter(torch.zeros(n, 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:]), self.weight)


@gin.configurable(denylist=["discrete"])  # the agent passes it
class CriticEnsemble(nn.Module):
    """C critics Q(s, a), each with one output per discount factor: -> (C, ..., G).

    With ``num_bins > 1`` (set by the agent) each output is a vector of bin logits: -> (C, ..., G, num_bins).

    ``hidden``: the widths of each critic's hidden layers. Twice the actor's by default: a critic that tells nearby
    actions and states apart is what the policy gradient and the BC filter climb (docs/RESULTS.md, item 54).

    ``action_repeat``: the action enters the first layer this many times beside the state. The state is
    wide (D) and the action narrow (A), so with the action entered once its first-layer weights are A of
    D + A inputs and the critic learns Q's dependence on the action far more slowly than on the state:
    the policy gradient and the BC filter then follow a Q that is nearly flat, or tilted the wrong way,
    in the action. Each copy gets its own weights, so the action's share of the first layer's output,
    and of each update's change to it, grows with the repeat count.

    ``discrete_head`` (discrete actions only; the agent passes ``discrete``): the state alone enters the critic,
    which has one output per action (as in DQN), and Q(s, a) is the output of the one-hot action ``a``. Every
    action's value then has its own last-layer weights on shared features, instead of the action being one more
    input, and one pass gives every action's value. ``action_repeat`` then applies to continuous and multi-binary
    actions only; ``discrete_head = False`` enters a discrete action as an input like theirs.

    ``gamma_input``: each discount factor's outputs come from a pass of their own, with log(1 + 1 / (1 - gamma))
    entered ``action_repeat`` times beside the input, so the hidden features differ per discount factor instead
    of being shared by all of them (G passes instead of one). Output g is read from pass g only, so every output
    keeps its own last-layer weights (which PopArt rescales).

    ``layer_norm``: each hidden layer is Linear -> LayerNorm -> activation (a gain and bias per critic), so the
    hidden features keep one scale while the weights drift (as in RLPD's critics). Off by default: the learning
    suite did not keep it (docs/RESULTS.md, item 34).

    ``dropout``: in training, each hidden layer's output is dropped at this rate (as in DroQ's critics), in the
    online critics, the target critics and the critics the actor climbs alike, so that a critic fitted to few
    transitions cannot hang its values on a few features.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        gammas: tuple[float, ...],
        num_critics: int = 2,
        hidden: tuple[int, ...] = (512, 512),
        num_bins: int = 1,
        action_repeat: int = 16,
        discrete: bool = False,
        discrete_head: bool = True,
        gamma_input: bool = False,
        layer_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("CriticEnsemble.action_repeat", action_repeat, minimum=1)
        self.dropout = check_below_one("CriticEnsemble.dropout", dropout)
        self.num_critics, self.num_gammas, self.num_bins = num_critics, len(gammas), num_bins
        self.action_repeat = action_repeat
        self.per_action = discrete and discrete_head
        gamma_code = torch.log1p(1.0 / (1.0 - torch.tensor(gammas, dtype=torch.float32)))  # (G,) ~ log horizon
        self.register_buffer("gamma_code", gamma_code if gamma_input else None, persistent=False)
        d_in = state_dim + (action_repeat if gamma_input else 0)
        dims = [d_in if self.per_action else d_in + action_dim * action_repeat, *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(num_critics, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(EnsembleLayerNorm(num_critics, o) for o in dims[1:]) if layer_norm else None
        # output units ordered (action, gamma, bin): PopArt rescales them per gamma
        outputs_per_input = action_dim if self.per_action else 1
        self.out = EnsembleLinear(num_critics, dims[-1], outputs_per_input * self.num_gammas * num_bins)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (C, ..., d_out) for every critic."""
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # (N, d_in)
        G, N = self.num_gammas, x.shape[0]
        if self.gamma_code is not None:  # one pass per discount factor: (G * N, d_in + repeat)
            code = self.gamma_code.to(x.dtype).view(G, 1, 1).expand(G, N, self.action_repeat)
            x = torch.cat([x.expand(G, N, -1), code], dim=-1).flatten(0, 1)
        x = x.unsqueeze(0).expand(self.num_critics, -1, -1)  # (C, N or G * N, d_in)
        for i, layer in enumerate(self.layers):
            x = layer(x)  # (C, N, hidden)
            x = F.leaky_relu(x if self.norms is None else self.norms[i](x))
            if self.dropout > 0.0 and self.training:
                x = F.dropout(x, self.dropout)
        out = self.out(x).float()  # (C, N or G * N, d_out), d_out ordered (action, gamma, bin)
        if self.gamma_code is not None:  # gamma g's outputs from pass g: (C, G, N, K, G, bins) -> (C, N, d_out)
            out = out.view(self.num_critics, G, N, -1, G, self.num_bins).diagonal(dim1=1, dim2=4)
            out = out.permute(0, 1, 2, 4, 3).flatten(2)  # (C, N, K, bins, G) -> (C, N, K * G * bins)
        return out.reshape(self.num_critics, *lead, out.shape[-1])

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # state (..., D) and action (..., A) share leading dims (or broadcast to them)
        lead = torch.broadcast_shapes(state.shape[:-1], action.shape[:-1])
        action = action.to(state.dtype)
        value_shape = (self.num_gammas,) if self.num_bins == 1 else (self.num_gammas, self.num_bins)
        if self.per_action:  # every action's outputs from the state alone, then the one-hot action's
            out = self._mlp(state).unflatten(-1, (action.shape[-1], *value_shape))  # (C, ..., A, G[, bins])
            onehot = action.reshape(*action.shape, *[1] * len(value_shape))  # (..., A, 1[, 1])
            return (out * onehot).sum(-1 - len(value_shape))  # (C, ..., G[, bins])
        x = torch.cat([state.expand(*lead, -1), *[action.expand(*lead, -1)] * self.action_repeat], dim=-1)
        return self._mlp(x).reshape(self.num_critics, *lead, *value_shape)  # (C, ..., G[, bins])
