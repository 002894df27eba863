"""A k-pull meta-bandit: the good arm must be found by trial and remembered across pulls."""

from __future__ import annotations

import functools

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_ints


@gin.configurable
class MetaBandit(gym.Env):
    """Each meta-episode hides a winning arm among ``n_arms``; ``k_episodes`` one-pull episodes follow.

    The observation carries nothing about the arm, so only memory of earlier pulls (the
    previous action and reward the sequence wrapper adds) can raise the return. Pulling the
    winning arm pays 1 with probability ``good_prob``, any other arm with probability
    ``bad_prob`` (by default 1 and 0: noiseless). ``log/Episode i Return`` is reported per pull.
    Noiseless best expected return: k - (n_arms - 1) / 2 for k >= n_arms; a random policy gets
    k * mean payoff.
    """

    def __init__(
        self,
        n_arms: int = 3,
        k_episodes: int = 6,
        split: str = "train",
        good_prob: float = 1.0,
        bad_prob: float = 0.0,
    ):
        check_ints("MetaBandit", None, n_arms=n_arms, k_episodes=k_episodes)
        if n_arms < 2 or k_episodes < 1:
            raise ValueError(f"need n_arms >= 2 and k_episodes >= 1, got {n_arms}, {k_episodes}")
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
        if not 0.0 <= bad_prob < good_prob <= 1.0:
            raise ValueError(f"need 0 <= bad_prob < good_prob <= 1, got bad_prob={bad_prob}, good_prob={good_prob}")
        self.n_arms, self.k = n_arms, k_episodes
        self.good_prob, self.bad_prob = float(good_prob), float(bad_prob)
        self.noisy = not (good_prob == 1.0 and bad_prob == 0.0)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(n_arms)
        self.env_name = f"bandit-{n_arms}arms" + ("-noisy" if self.noisy else "")
        self._good, self._pull = 0, 0

    def best_return(self) -> float:
        """Expected return of the optimal explore-then-exploit policy (noiseless), or of a
        Bayes-greedy searcher (noisy payoffs; Monte Carlo, see :func:`bayes_greedy_return`)."""
        if self.noisy:
            return bayes_greedy_return(self.n_arms, self.k, self.good_prob, self.bad_prob)
        if self.k < self.n_arms:  # may run out of pulls before finding the arm
            return sum((self.k - i) / self.n_arms for i in range(self.k))
        return self.k - (self.n_arms - 1) / 2

    def random_return(self) -> float:
        return self.k * (self.good_prob + (self.n_arms - 1) * self.bad_prob) / self.n_arms

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._good = int(self.np_random.integers(self.n_arms))
        self._pull = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        p = self.good_prob if int(action) == self._good else self.bad_prob
        reward = float(p == 1.0 or (p > 0.0 and self.np_random.random() < p))
        self._pull += 1
        info = {f"log/Episode {self._pull} Return": reward}
        return np.zeros(1, np.float32), reward, self._pull >= self.k, False, info


@functools.lru_cache(maxsize=32)
def bayes_greedy_return(n_arms: int, k: int, good_prob: float, bad_prob: float, n: int = 20000) -> float:
    """Expected return of a searcher that knows the payoff probabilities and always pulls the arm
    most likely (by Bayes' rule) to be the good one, the least-pulled among ties (Monte Carlo, seed 0)."""
    rng = np.random.default_rng(0)
    good = rng.integers(n_arms, size=n)
    log_post = np.zeros((n, n_arms))  # log-likelihood of "arm i is good" given the pulls so far
    pulls = np.zeros((n, n_arms))
    win, lose = np.log(good_prob / max(bad_prob, 1e-12)), np.log(max(1 - good_prob, 1e-12) / (1 - bad_prob))
    total = np.zeros(n)
    rows = np.arange(n)
    for _ in range(k):
        score = log_post - 1e-6 * pulls  # ties: the least-pulled arm
        arm = score.argmax(1)
        p = np.where(arm == good, good_prob, bad_prob)
        reward = rng.random(n) < p
        total += reward
        log_post[rows, arm] += np.where(reward, win, lose)
        pulls[rows, arm] += 1
    return float(total.mean())
