"""An exploration bonus for the critics' TD targets: how new each observation is within its window of the
meta-episode (``Agent.novelty_bonus``)."""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import Tensor

from amago_like.checks import check_fraction, check_number
from amago_like.nets.values import masked_mean

#: ``Agent.novelty_bonus = "auto"`` (the default): this bonus where every observation is a flat vector, none where
#: one is an image or other array: distances between raw pixels say little about novelty, and over every pixel of
#: every pair of timesteps they are costly
AUTO_NOVELTY_BONUS = 0.1


def is_flat(obs_space: gym.spaces.Dict) -> bool:
    """Every observation a flat vector (a 1-d Box), as the distances here and the reward decoder's inputs need."""
    return all(isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in obs_space.spaces.values())


def flat_obs(obs: dict[str, Tensor]) -> Tensor:
    """Each observation (B, L, ...) flattened and all concatenated: (B, L, F) float."""
    return torch.cat([v.flatten(2).float() for v in obs.values()], -1)


def resolve_novelty_bonus(bonus: float | str, obs_space: gym.spaces.Dict) -> float:
    """``Agent.novelty_bonus``: a number >= 0 as it is, or ``"auto"`` resolved for ``obs_space``."""
    if isinstance(bonus, str):
        if bonus != "auto":
            raise ValueError(f'Agent.novelty_bonus must be a number >= 0 or "auto", got {bonus!r}')
        return AUTO_NOVELTY_BONUS if is_flat(obs_space) else 0.0
    return check_number("Agent.novelty_bonus", bonus, minimum=0.0)


class NoveltyBonus:
    """``Agent.novelty_bonus`` b and ``Agent.novelty_fade``: what each transition's reward gains in the critics' TD
    targets, b x :func:`episodic_novelty`. With ``fade`` (a fraction of the run in (0, 1]) b falls linearly to 0 over
    that first part of the run's planned updates and stays 0 after it, so the agent explores early and learns the
    env's own returns late; None keeps b for the whole run."""

    def __init__(self, obs_space: gym.spaces.Dict, bonus: float | str, fade: float | None):
        self.strength = resolve_novelty_bonus(bonus, obs_space)
        self.fade = check_fraction("Agent.novelty_fade", fade, allow_none=True)

    def __call__(self, obs: dict[str, Tensor], pad_mask: Tensor, progress: Tensor) -> Tensor | float:
        """(B, L-1, 1), or 0 without a bonus; ``progress``: the fraction of the run's planned updates done."""
        if not self.strength:
            return 0.0
        factor = 1.0 if self.fade is None else (1.0 - progress / self.fade).clamp(min=0.0)
        return self.strength * factor * episodic_novelty(obs, pad_mask)


def episodic_novelty(obs: dict[str, Tensor], pad_mask: Tensor) -> Tensor:
    """How new each transition's next observation is within its window: (B, L-1, 1) in [0, 1].

    For transition t, d_t = the distance from observation t+1 to the nearest of observations 0 .. t (real ones),
    over the mean of d over the batch's real transitions, capped at 1. A revisit scores 0, a step as far from
    everything seen as a typical step scores 1; observations that never change score 0 throughout. The score depends
    only on what the window shows, which is the context the trunk sees, so a bonus made of it is a function of the
    agent's own input. obs: each (B, L, ...) (flattened and concatenated); pad_mask (B, L, 1) bool, True = real."""
    x = flat_obs(obs)  # (B, L, F)
    L = x.shape[1]
    real = pad_mask[..., 0]  # (B, L)
    earlier = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1)  # (L, L): j < i
    seen = earlier & real.unsqueeze(1)  # (B, L, L): observation j is real and before i
    pairwise = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # (B, L, L), exact: a revisit is 0
    d = pairwise.masked_fill(~seen, float("inf")).amin(-1)[:, 1:]  # (B, L-1): to the nearest observation before
    next_real = real[:, 1:]
    d = torch.where(next_real, d, torch.zeros_like(d))  # padded transitions: 0, not inf
    scale = masked_mean(d, next_real)
    return (d / scale.clamp(min=1e-6)).clamp(max=1.0).unsqueeze(-1)
