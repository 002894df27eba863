"""An auxiliary loss that asks the trunk's state to carry what the task is (``Agent.reward_decoder_coeff``).

From the state at step t, a small network predicts the reward of other transitions j of the same window, past and
future, given what that transition saw and did (observation j, action j, observation j+1): the rewards of the
unseen steps are fixed by the hidden task (where the goal is, which arm pays), so predicting them rewards a memory
that infers it. This is the reward decoder of VariBAD, trained here on the policy's own trunk beside the RL losses.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import Tensor, nn

from amago_like.nets.mlp import mlp
from amago_like.nets.novelty import flat_obs, is_flat
from amago_like.nets.values import masked_mean


def flat_obs_dim(obs_space: gym.spaces.Dict) -> int:
    """The width of every observation flattened and concatenated; refuses images, whose pixels are no input here."""
    if not is_flat(obs_space):
        raise ValueError(
            "Agent.reward_decoder_coeff needs flat (1-d Box) observations; this env's are "
            f"{ {k: s.shape for k, s in obs_space.spaces.items()} }: bind Agent.reward_decoder_coeff = 0"
        )
    return sum(int(s.shape[0]) for s in obs_space.spaces.values())


class RewardDecoder(nn.Module):
    """Predicts r_j from (state_t, o_j, a_j, o_{j+1}) for ``samples`` transitions j drawn at random per step t."""

    def __init__(
        self, state_dim: int, obs_space: gym.spaces.Dict, action_dim: int, hidden: int = 128, samples: int = 4
    ):
        super().__init__()
        obs_dim = flat_obs_dim(obs_space)
        self.samples = samples
        self.net = mlp(state_dim + 2 * obs_dim + action_dim, (hidden, hidden), 1)

    def loss(self, states: Tensor, obs: dict[str, Tensor], actions: Tensor, rews: Tensor, real: Tensor) -> Tensor:
        """Mean squared error in units of the batch's reward spread. states (B, L-1, D): the trunk at each step
        t; obs each (B, L, ...); actions (B, L-1, A); rews and real (B, L-1, 1), real transitions a prefix."""
        B, T, _ = states.shape
        x = flat_obs(obs)  # (B, L, F)
        n = real[..., 0].sum(-1).clamp(min=1)  # (B,) real transitions per window
        j = (torch.rand(B, T, self.samples, device=states.device) * n.view(B, 1, 1)).long()  # (B, T, K)
        flat_j = j.view(B, T * self.samples)

        def at(seq: Tensor, offset: int = 0) -> Tensor:  # seq (B, L', C) at j + offset -> (B, T, K, C)
            idx = (flat_j + offset).unsqueeze(-1).expand(-1, -1, seq.shape[-1])
            return seq.gather(1, idx).view(B, T, self.samples, seq.shape[-1])

        with torch.no_grad():  # targets in units of the batch's spread, so any reward scale weighs alike
            mean = masked_mean(rews, real)
            std = masked_mean((rews - mean) ** 2, real).sqrt()
            target = (at(rews) - mean) / (std + 1e-3)  # (B, T, K, 1)
        inputs = torch.cat([states.unsqueeze(2).expand(-1, -1, self.samples, -1), at(x), at(actions), at(x, 1)], -1)
        error = (self.net(inputs) - target) ** 2  # (B, T, K, 1)
        return masked_mean(error, real.unsqueeze(2))
