"""Parallel copies of wrapped envs, auto-resetting in the same step an episode ends."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from amago_like.envs.wrapper import AMAGOEnv, EpisodeStats

ENV_MODES = ("sync", "async")


def as_amago_env(env: gym.Env) -> AMAGOEnv:
    return env if isinstance(env, AMAGOEnv) else AMAGOEnv(env)


def _wrapped_factory(make_env: Callable[[], gym.Env], save_dir: str | None, fmt: str) -> Callable[[], AMAGOEnv]:
    def make() -> AMAGOEnv:
        env = as_amago_env(make_env())
        env.configure_saving(save_dir, fmt)
        return env

    return make


def make_vector_env(
    make_env: Callable[[], gym.Env],
    num_envs: int,
    mode: str = "sync",
    save_dir: str | None = None,
    save_format: str = "npz",
    mp_context: str | None = None,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make_env()`` (wrapped in AMAGOEnv if needed), saving episodes to ``save_dir``."""
    if mode not in ENV_MODES:
        raise ValueError(f"unknown env_mode {mode!r}; choose one of {ENV_MODES}")
    if num_envs < 1:
        raise ValueError(f"parallel_actors must be >= 1, got {num_envs}")
    fns = [_wrapped_factory(make_env, save_dir, save_format) for _ in range(num_envs)]
    same_step = gym.vector.AutoresetMode.SAME_STEP
    if mode == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=same_step)
    return gym.vector.AsyncVectorEnv(fns, context=mp_context, autoreset_mode=same_step)


def finished_episodes(infos: dict) -> list[EpisodeStats]:
    """EpisodeStats of every env that finished an episode in this vector step."""
    final = infos.get("final_info", {})
    stats, mask = final.get("episode_stats"), final.get("_episode_stats")
    if stats is None:
        return []
    return [s for s, m in zip(stats, mask) if m and isinstance(s, EpisodeStats)]


def stack_obs(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Vector-env observations are already (N, ...) arrays; copy so the env may reuse its buffers."""
    return {k: np.array(v) for k, v in obs.items()}
