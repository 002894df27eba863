"""The sequence wrapper: any gymnasium env -> timesteps of (obs dict, prev action + reward, time index)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import gin
import gymnasium as gym
import numpy as np

from amago_like.data.trajectory import FORMATS, Trajectory, save_trajectory

RL2_KEY = "_rl2s"  # observation key of [prev reward, prev action]
TIME_KEY = "_time_idx"  # observation key of the time index within the (meta-)episode
LOG_PREFIX = "log/"  # info keys with this prefix are episode metrics (last value of the episode)


@dataclass
class EpisodeStats:
    """What one finished episode reports; travels through vector-env infos as one object."""

    env_name: str
    ret: float
    length: int
    metrics: dict[str, float] = field(default_factory=dict)


def split_timestep(obs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Split a wrapped observation into (env obs dict, rl2s, time_idxs)."""
    env_obs = {k: v for k, v in obs.items() if k not in (RL2_KEY, TIME_KEY)}
    return env_obs, obs[RL2_KEY], obs[TIME_KEY]


@gin.configurable
class AMAGOEnv(gym.Wrapper):
    """Wraps a gymnasium env so every step yields a timestep the sequence model reads.

    Observations become a dict (a non-dict space is stored under ``"observation"``) plus the
    previous reward and action (``_rl2s``) and the time index (``_time_idx``). Box actions are
    taken in [-1, 1] and rescaled to the env's bounds; Discrete actions are integers and are
    stored one-hot. Finished episodes are saved to disk once ``configure_saving`` was called.
    The env's name for metrics is ``env.unwrapped.env_name`` when the env sets it per task,
    else ``env_name``, else the env class name.
    """

    def __init__(self, env: gym.Env, env_name: str | None = None):
        super().__init__(env)
        self._default_name = env_name or type(env.unwrapped).__name__
        inner = env.observation_space
        obs_spaces = dict(inner.spaces) if isinstance(inner, gym.spaces.Dict) else {"observation": inner}
        if RL2_KEY in obs_spaces or TIME_KEY in obs_spaces:
            raise ValueError(f"observation keys {RL2_KEY!r} and {TIME_KEY!r} are reserved by AMAGOEnv")
        for k, space in obs_spaces.items():
            if not isinstance(space, gym.spaces.Box):
                raise TypeError(
                    f"observation {k!r} is a {type(space).__name__}; AMAGOEnv needs Box observations "
                    "(wrap the env with a gymnasium observation wrapper such as FlattenObservation)"
                )
        act = env.action_space
        if isinstance(act, gym.spaces.Discrete):
            self.discrete, self.action_dim = True, int(act.n)
            self.action_space = gym.spaces.Discrete(self.action_dim)
        elif isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
            self.discrete, self.action_dim = False, int(act.shape[0])
            self._low, self._high = act.low.astype(np.float64), act.high.astype(np.float64)
            self._bounded = bool(np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high)))
            self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        else:
            raise TypeError(f"unsupported action space {act}; AMAGOEnv takes Discrete or 1-D Box actions")
        self.observation_space = gym.spaces.Dict(
            {
                **obs_spaces,
                RL2_KEY: gym.spaces.Box(-np.inf, np.inf, (1 + self.action_dim,), np.float32),
                TIME_KEY: gym.spaces.Box(0, np.iinfo(np.int64).max, (1,), np.int64),
            }
        )
        self._save_dir: str | None = None
        self._save_fmt = "npz"
        self._reset_buffers()

    # ------------------------------------------------------------------ saving
    def configure_saving(self, directory: str | None, fmt: str = "npz") -> None:
        """Save each finished episode to ``directory`` in ``fmt`` (None turns saving off)."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown trajectory format {fmt!r}; choose one of {FORMATS}")
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        self._save_dir, self._save_fmt = directory, fmt

    @property
    def env_name(self) -> str:
        return getattr(self.env.unwrapped, "env_name", None) or self._default_name

    def _reset_buffers(self) -> None:
        self._obs: list[dict[str, np.ndarray]] = []
        self._rl2s: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rews: list[float] = []
        self._metrics: dict[str, float] = {}
        self._time = 0
        self._terminated = False

    def _timestep(self, raw_obs, prev_action: np.ndarray, prev_reward: float) -> dict[str, np.ndarray]:
        obs = dict(raw_obs) if isinstance(raw_obs, dict) else {"observation": raw_obs}
        for k, v in obs.items():
            v = np.asarray(v)
            expected = self.observation_space[k].shape
            if v.shape != expected:
                raise ValueError(f"{self.env_name}: observation {k!r} has shape {v.shape}, expected {expected}")
            if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):  # checked before any cast hides it
                raise ValueError(f"{self.env_name}: observation {k!r} contains NaN or inf at step {self._time}")
        obs = {k: np.asarray(v, dtype=self.observation_space[k].dtype) for k, v in obs.items()}
        rl2 = np.concatenate([[prev_reward], prev_action]).astype(np.float32)
        self._obs.append(obs)
        self._rl2s.append(rl2)
        return {**obs, RL2_KEY: rl2, TIME_KEY: np.array([self._time], dtype=np.int64)}

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        raw, info = self.env.reset(seed=seed, options=options)
        self._reset_buffers()
        return self._timestep(raw, np.zeros(self.action_dim, dtype=np.float32), 0.0), info

    def step(self, action):
        if self.discrete:
            a = int(np.asarray(action).reshape(-1)[0])
            if not 0 <= a < self.action_dim:
                raise ValueError(f"discrete action {a} outside [0, {self.action_dim})")
            stored = np.zeros(self.action_dim, dtype=np.float32)
            stored[a] = 1.0
            env_action = a
        else:
            stored = np.clip(np.asarray(action, dtype=np.float32).reshape(self.action_dim), -1.0, 1.0)
            env_action = (
                self._low + (stored + 1.0) * 0.5 * (self._high - self._low)
                if self._bounded
                else stored.astype(np.float64)
            ).astype(self.env.action_space.dtype)
        raw, reward, terminated, truncated, info = self.env.step(env_action)
        reward = float(reward)
        if not np.isfinite(reward):
            raise ValueError(f"{self.env_name}: reward is {reward} at step {self._time}")
        self._actions.append(stored)
        self._rews.append(reward)
        self._time += 1
        self._metrics.update({k: float(v) for k, v in info.items() if k.startswith(LOG_PREFIX)})
        obs = self._timestep(raw, stored, reward)
        if terminated or truncated:
            self._terminated = bool(terminated)
            info["episode_stats"] = EpisodeStats(self.env_name, sum(self._rews), self._time, dict(self._metrics))
            if self._save_dir is not None:
                save_trajectory(self.trajectory(), self._save_dir, self.env_name, self._save_fmt)
        return obs, reward, terminated, truncated, info

    def trajectory(self) -> Trajectory:
        """The episode so far as a Trajectory record."""
        n = len(self._actions)
        dones = np.zeros((n, 1), dtype=bool)
        if n and self._terminated:
            dones[-1] = True
        return Trajectory(
            obs={k: np.stack([o[k] for o in self._obs]) for k in self._obs[0]},
            rl2s=np.stack(self._rl2s),
            time_idxs=np.arange(n + 1, dtype=np.int64)[:, None],
            actions=np.stack(self._actions) if n else np.zeros((0, self.action_dim), np.float32),
            rews=np.asarray(self._rews, dtype=np.float32)[:, None].reshape(n, 1),
            dones=dones,
        )
