"""T-maze: a cue at the first step decides which way to turn at a junction ``length`` steps later."""

from __future__ import annotations

from typing import Any

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_ints


@gin.configurable
class TMaze(gym.Env):
    """A corridor of ``length`` steps ending in a junction; only the first observation shows the cue.

    Observation ``[cue, at_junction]``: the cue (+1 or -1, drawn per episode) on the first step and 0
    afterwards; ``at_junction`` is 1.0 at the junction. Actions: 0 "up", 1 "down". In the corridor
    every action walks one step on (a passive corridor, so the task tests memory alone, not
    exploration); at the junction, "up" pays 1.0 if the cue was +1 and "down" pays 1.0 if it was -1,
    the other turn pays 0, and the episode ends. Random turning earns 0.5, remembering the cue 1.0.
    ``log/Success`` reports whether the turn was right.
    """

    def __init__(self, length: int = 100, split: str = "train"):
        check_ints("TMaze", 1, length=length)
        if split not in ("train", "test"):
            raise ValueError(f"unknown TMaze split {split!r}; choose 'train' or 'test'")
        self.length = length
        self.env_name = f"tmaze-{length}"
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.cue, self._t, self._done = 1, 0, True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        cue = (options or {}).get("cue")
        self.cue = int(cue) if cue is not None else (1 if self.np_random.random() < 0.5 else -1)
        if self.cue not in (1, -1):
            raise ValueError(f"TMaze cue must be +1 or -1, got {cue}")
        self._t, self._done = 0, False
        return np.array([self.cue, 0.0], dtype=np.float32), {}

    def step(self, action):
        if self._done:
            raise RuntimeError("TMaze.step() called before reset() or after the episode ended")
        a = int(np.asarray(action).reshape(-1)[0])
        if self._t < self.length:  # corridor
            self._t += 1
            return np.array([0.0, float(self._t == self.length)], dtype=np.float32), 0.0, False, False, {}
        right = float((a == 0) == (self.cue == 1))
        self._done = True
        obs = np.array([0.0, 1.0], dtype=np.float32)
        return obs, right, True, False, {"log/Success": right, "log/Episode 1 Return": right}

    def best_return(self) -> float:
        return 1.0

    def random_return(self) -> float:
        return 0.5
