"""``MultiTaskAgent``: the ``Agent`` whose critics classify symlog values into bins instead of regressing them."""

from __future__ import annotations

import copy

import gin
import gymnasium as gym
import torch

from amago_like.agents.agent import Agent
from amago_like.config import refuse_passed
from amago_like.nets.heads import CriticEnsemble
from amago_like.nets.traj_encoders import TformerTrajEncoder, TrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder, TstepEncoder
from amago_like.nets.values import ValueBins, masked_mean, symexp, symlog

VALUE_TARGETS = ("two_hot", "hl_gauss")


@gin.configurable
class MultiTaskAgent(Agent):
    """Agent whose critics classify values instead of regressing them (AMAGO-2's multi-task critic).

    Each critic output is a vector of logits over ``num_bins`` evenly spaced bins on
    [-bin_limit, bin_limit] in symlog space, trained by cross-entropy against ``value_target``
    ("two_hot" or "hl_gauss", the latter with std ``hl_gauss_sigma`` bin widths) of symlog(TD target).
    Q = symexp(expected bin value); the actor maximises the expected bin value (symlog Q), which
    keeps its scale comparable across tasks whose returns differ by orders of magnitude.
    Every other argument goes to ``Agent`` (PopArt is not used: the loss is already scale-free).
    """

    def __init__(
        self,
        obs_space: gym.spaces.Dict,
        rl2_space: gym.spaces.Box,
        action_space: gym.Space,
        max_seq_len: int,
        tstep_encoder_type: type[TstepEncoder] = FFTstepEncoder,
        traj_encoder_type: type[TrajEncoder] = TformerTrajEncoder,
        num_bins: int = 128,
        bin_limit: float = 10.0,
        value_target: str = "two_hot",
        hl_gauss_sigma: float = 0.75,
        **agent_kwargs,
    ):
        if value_target not in VALUE_TARGETS:
            raise ValueError(f"value_target must be one of {VALUE_TARGETS}, got {value_target!r}")
        if agent_kwargs.pop("popart", False):
            raise ValueError("MultiTaskAgent's classification critic does not use PopArt; set popart=False")
        refuse_passed("Agent", {"popart": None})  # passed as False below: an Agent.popart binding would do nothing
        super().__init__(
            obs_space=obs_space,
            rl2_space=rl2_space,
            action_space=action_space,
            max_seq_len=max_seq_len,
            tstep_encoder_type=tstep_encoder_type,
            traj_encoder_type=traj_encoder_type,
            popart=False,
            **agent_kwargs,
        )
        self.value_target = value_target
        self.bins = ValueBins(num_bins, bin_limit, hl_gauss_sigma)
        d, gammas = self.traj_encoder.emb_dim, tuple(self.gammas.tolist())
        self.critics = CriticEnsemble(
            d, self.action_dim, gammas, self.critics.num_critics, num_bins=num_bins, discrete=self.discrete
        )
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)

    def symlog_values(self, raw: torch.Tensor) -> torch.Tensor:  # (C, ..., G, bins) -> (C, ..., G)
        return self.bins.decode(raw.softmax(-1))

    def q_values(self, raw: torch.Tensor) -> torch.Tensor:
        return symexp(self.symlog_values(raw))

    def actor_values(self, raw: torch.Tensor) -> torch.Tensor:
        return self.symlog_values(raw)

    def critic_loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of raw (C, B, L-1, G, bins) against the binned symlog(target (B, L-1, G))."""
        encode = self.bins.two_hot if self.value_target == "two_hot" else self.bins.hl_gauss
        target_probs = encode(symlog(target))  # (B, L-1, G, bins)
        ce = -(target_probs.unsqueeze(0) * raw.log_softmax(-1)).sum(-1)  # (C, B, L-1, G)
        return masked_mean(ce, mask.unsqueeze(0))
