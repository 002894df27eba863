"""Crashes in worker processes surface as errors naming the cause, never as hangs."""

import gymnasium as gym
import numpy as np
import pytest

from amago_like import MetaBandit
from amago_like.data import RLDataset, make_dataloader
from amago_like.envs.vector import make_vector_env


class CrashingBandit(MetaBandit):
    """Raises from step() on its third pull."""

    def step(self, action):
        if self._pull == 2:
            raise RuntimeError("simulator exploded at pull 3")
        return super().step(action)


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium also prints the worker error
def test_async_env_worker_crash_is_reported_with_its_error():
    envs = make_vector_env(CrashingBandit, 2, mode="async")
    try:
        envs.reset(seed=0)
        envs.step(np.zeros(2, dtype=np.int64))
        envs.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(RuntimeError, match="simulator exploded at pull 3"):
            envs.step(np.zeros(2, dtype=np.int64))
    finally:
        envs.close(terminate=True)


class BrokenDataset(RLDataset):
    @property
    def save_new_trajs_to(self):
        return None

    def sample_random_trajectory(self, rng):
        raise ValueError("the relabeling hook divided by zero")


def test_dataloader_worker_crash_is_reported_with_its_error():
    loader = make_dataloader(BrokenDataset(), seq_len=4, batch_size=2, batches=2, workers=2)
    with pytest.raises(ValueError, match="the relabeling hook divided by zero"):
        next(iter(loader))


def test_env_with_unsupported_observation_space_fails_clearly():
    class TextEnv(gym.Env):
        observation_space = gym.spaces.Text(8)
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(TypeError, match="needs Box observations"):
        make_vector_env(TextEnv, 1, mode="sync")
