"""A k-pull meta-bandit: the good arm must be found by trial and remembered across pulls."""

from __future__ import annotations

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_ints


@gin.configurable
class MetaBandit(gym.Env):
    """Each meta-episode hides a winning arm among ``n_arms``; ``k_episodes`` one-pull episodes follow.

    The observation carries nothing about the arm, so only memory of earlier pulls (the
    previous action and reward the sequence wrapper adds) can raise the return. Pulling the
    winning arm pays 1, any other arm 0. ``log/Episode i Return`` is reported per pull.
    Best expected return: k - (n_arms - 1) / 2 for k >= n_arms; a random policy gets k / n_arms.
    """

    def __init__(self, n_arms: int = 3, k_episodes: int = 6, split: str = "train"):
        check_ints("MetaBandit", None, n_arms=n_arms, k_episodes=k_episodes)
        if n_arms < 2 or k_episodes < 1:
            raise ValueError(f"need n_arms >= 2 and k_episodes >= 1, got {n_arms}, {k_episodes}")
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
        self.n_arms, self.k = n_arms, k_episodes
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(n_arms)
        self.env_name = f"bandit-{n_arms}arms"
        self._good, self._pull = 0, 0

    def best_return(self) -> float:
        """Expected return of the optimal explore-then-exploit policy."""
        if self.k < self.n_arms:  # may run out of pulls before finding the arm
            return sum((self.k - i) / self.n_arms for i in range(self.k))
        return self.k - (self.n_arms - 1) / 2

    def random_return(self) -> float:
        return self.k / self.n_arms

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._good = int(self.np_random.integers(self.n_arms))
        self._pull = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward = float(int(action) == self._good)
        self._pull += 1
        info = {f"log/Episode {self._pull} Return": reward}
        return np.zeros(1, np.float32), reward, self._pull >= self.k, False, info
