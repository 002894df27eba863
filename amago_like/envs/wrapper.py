"""The sequence wrapper: any gymnasium env -> timesteps of (obs dict, prev action + reward, time index).

The per-episode bookkeeping (checked timesteps, running stats, trajectory files) lives in
:class:`EpisodeRecorder`, shared by :class:`AMAGOEnv` (one env) and the vector wrapper in
``amago_like.envs.vector`` (a user's batched env).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_choice
from amago_like.data.trajectory import FORMATS, Trajectory, save_trajectory

RL2_KEY = "_rl2s"  # observation key of [prev reward, prev action]
TIME_KEY = "_time_idx"  # observation key of the time index within the (meta-)episode
LOG_PREFIX = "log/"  # info keys with this prefix are episode metrics (last value of the episode)
_STAGGER_SALT = 0x57A6_6E12  # keeps the segment-length stream apart from the env's own seeding
# clip bounds as 0-d float32 arrays: numpy 2 ufuncs take these about twice as fast as Python floats
_MINUS_ONE, _ONE = np.array(-1.0, np.float32), np.array(1.0, np.float32)


@dataclass
class EpisodeStats:
    """What one finished episode reports; travels through vector-env infos as one object."""

    env_name: str
    ret: float
    length: int
    metrics: dict[str, float] = field(default_factory=dict)
    files: tuple[str, ...] = field(default=(), compare=False)  # where it was saved (every segment)


def split_timestep(obs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Split a wrapped observation into (env obs dict, rl2s, time_idxs)."""
    env_obs = {k: v for k, v in obs.items() if k not in (RL2_KEY, TIME_KEY)}
    return env_obs, obs[RL2_KEY], obs[TIME_KEY]


def box_observation_spaces(space: gym.Space) -> dict[str, gym.spaces.Box]:
    """An env's observation space as named Boxes (a non-dict space is named ``"observation"``)."""
    spaces = dict(space.spaces) if isinstance(space, gym.spaces.Dict) else {"observation": space}
    if RL2_KEY in spaces or TIME_KEY in spaces:
        raise ValueError(f"observation keys {RL2_KEY!r} and {TIME_KEY!r} are reserved by AMAGOEnv")
    for k, s in spaces.items():
        if not isinstance(s, gym.spaces.Box):
            raise TypeError(
                f"observation {k!r} is a {type(s).__name__}; AMAGOEnv needs Box observations "
                "(wrap the env with a gymnasium observation wrapper such as FlattenObservation)"
            )
    return spaces


def sequence_observation_space(obs_spaces: dict[str, gym.spaces.Box], action_dim: int) -> gym.spaces.Dict:
    """The wrapped observation space: the env's Boxes plus ``_rl2s`` (1+A,) and ``_time_idx`` (1,)."""
    return gym.spaces.Dict(
        {
            **obs_spaces,
            RL2_KEY: gym.spaces.Box(-np.inf, np.inf, (1 + action_dim,), np.float32),
            TIME_KEY: gym.spaces.Box(0, np.iinfo(np.int64).max, (1,), np.int64),
        }
    )


class ActionAdapter:
    """Turns policy actions into env actions and the form trajectories store.

    Box actions are taken in [-1, 1] (clipped) and rescaled to the env's bounds (passed through
    when unbounded); Discrete actions are integers in [0, n), stored one-hot.
    """

    def __init__(self, env_space: gym.Space):
        if isinstance(env_space, gym.spaces.Discrete):
            self.discrete, self.dim = True, int(env_space.n)
            self.space: gym.Space = gym.spaces.Discrete(self.dim)
            self._eye = np.eye(self.dim, dtype=np.float32)
        elif isinstance(env_space, gym.spaces.Box) and len(env_space.shape) == 1:
            self.discrete, self.dim = False, int(env_space.shape[0])
            self.low, self.high = env_space.low.astype(np.float64), env_space.high.astype(np.float64)
            self.bounded = bool(np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))
            self.env_dtype = env_space.dtype
            self.space = gym.spaces.Box(-1.0, 1.0, (self.dim,), np.float32)
            # env action = stored * scale + offset, computed in the env's float dtype (float64 for integer Boxes)
            self._math_dtype = self.env_dtype if self.env_dtype.kind == "f" else np.dtype(np.float64)
            scale, offset = np.ones(self.dim), np.zeros(self.dim)  # unbounded: passed through
            if self.bounded:
                scale, offset = (self.high - self.low) / 2.0, (self.high + self.low) / 2.0
            self._identity = bool(np.all(scale == 1.0) and np.all(offset == 0.0))
            self._copy_only = self._identity and self.env_dtype == np.float32
            self._shape = (self.dim,)
            self._scale, self._offset = scale.astype(self._math_dtype), offset.astype(self._math_dtype)
        else:
            raise TypeError(f"unsupported action space {env_space}; AMAGOEnv takes Discrete or 1-D Box actions")

    def _to_env(self, stored: np.ndarray) -> np.ndarray:
        """Clipped [-1, 1] float32 actions -> env actions in the env's dtype (always a new array)."""
        if self._identity:  # a copy: the env may not alter what the trajectory keeps
            return stored.copy() if self._copy_only else stored.astype(self.env_dtype)
        env_actions = stored.astype(self._math_dtype)
        env_actions *= self._scale
        env_actions += self._offset
        return env_actions if env_actions.dtype == self.env_dtype else env_actions.astype(self.env_dtype)

    def __call__(self, actions: Any, num: int) -> tuple[np.ndarray, np.ndarray]:
        """``num`` policy actions -> (stored (num, A) float32, env actions (num,) int64 or (num, A))."""
        if self.discrete:
            a = np.asarray(actions).reshape(num, -1)[:, 0].astype(np.int64)
            bad = (a < 0) | (a >= self.dim)
            if bad.any():
                raise ValueError(f"discrete action {a[bad][0]} outside [0, {self.dim})")
            return self._eye[a], a
        stored = np.maximum(np.asarray(actions, dtype=np.float32).reshape(num, self.dim), _MINUS_ONE)
        np.minimum(stored, _ONE, out=stored)
        return stored, self._to_env(stored)

    def single(self, action: Any) -> tuple[np.ndarray, Any]:
        """One policy action -> (stored (A,) float32, env action: an int, or an (A,) array)."""
        if self.discrete:
            if isinstance(action, (int, np.integer)):
                idx = int(action)
            else:
                a = np.asarray(action)
                idx = int(a.flat[0] if a.ndim else a)  # the first entry, as __call__ reads it
            if not 0 <= idx < self.dim:
                raise ValueError(f"discrete action {idx} outside [0, {self.dim})")
            return self._eye[idx].copy(), idx
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self._shape:
            a = a.reshape(self._shape)
        stored = np.maximum(a, _MINUS_ONE)  # a new array; two ufuncs cost half of np.clip on tiny arrays
        np.minimum(stored, _ONE, out=stored)
        return stored, stored.copy() if self._copy_only else self._to_env(stored)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack`` of same-shape, same-dtype arrays, several times faster for long episodes."""
    if arrays[0].ndim == 0:
        return np.array(arrays)
    return np.concatenate(arrays).reshape(len(arrays), *arrays[0].shape)


class _ObsCheck:
    """How one observation key is checked and cast (precomputed per key, used every step)."""

    __slots__ = ("key", "shape", "dtype", "inexact", "size", "finite")

    def __init__(self, key: str, space: gym.spaces.Box):
        self.key, self.shape, self.dtype = key, space.shape, space.dtype
        self.inexact = self.dtype.kind in "fc"  # NaN and inf exist only in float / complex arrays
        self.size = int(np.prod(space.shape))
        # np.isfinite into this buffer + count_nonzero: a third of the cost of np.isfinite(v).all()
        self.finite = np.empty(space.shape, bool)


_ENV_FIX = "fix the env, or wrap it (a gymnasium ObservationWrapper) so its observations match its space"


class EpisodeRecorder:
    """One env's episode in progress: checked timesteps, running stats, and its trajectory files.

    With saving on, the episode is written when it ends. With ``save_every=N`` a segment is also
    written whenever it reaches N transitions; the next segment starts at that segment's last
    timestep (so it appears in both files, with its real ``_rl2s`` and global time index). With
    ``stagger`` the first segment of each episode has a random length in [1, N], drawn from a
    stream seeded by :meth:`seed`, so parallel actors do not all write files at the same step.

    The env's name (for files and stats) is ``env_name``, or ``name_source()`` when that is set;
    it is read only when a file is written or an episode ends.
    """

    def __init__(self, obs_spaces: dict[str, gym.spaces.Box], action_dim: int, env_name: str):
        self.obs_spaces, self.action_dim, self.env_name = obs_spaces, action_dim, env_name
        self.name_source: Callable[[], str] | None = None
        self._checks = [_ObsCheck(k, s) for k, s in obs_spaces.items()]
        # a non-dict observation is stored as "observation": only possible when that is the one key
        self._single = self._checks[0] if list(obs_spaces) == ["observation"] else None
        self.save_dir: str | None = None
        self.fmt = "npz"
        self.save_every: int | None = None
        self.stagger = False
        self._rng = np.random.default_rng()
        self._clear(first_len=None)

    def configure_saving(
        self, directory: str | None, fmt: str = "npz", save_every: int | None = None, stagger: bool = False
    ) -> None:
        """Save episodes to ``directory`` (None: off) in ``fmt``, cut every ``save_every`` transitions."""
        check_choice("trajectory format", fmt, FORMATS)
        if save_every is not None and save_every < 1:
            raise ValueError(f"save_every must be >= 1 transitions (or None), got {save_every}")
        if stagger and save_every is None:
            raise ValueError("stagger=True staggers the first segment's length, so it needs save_every")
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        self.save_dir, self.fmt, self.save_every, self.stagger = directory, fmt, save_every, stagger

    def seed(self, seed: int | None) -> None:
        """Reseed the segment-length stream (None keeps the current one)."""
        if seed is not None:
            self._rng = np.random.default_rng([int(seed), _STAGGER_SALT])

    def _clear(self, first_len: int | None) -> None:
        self._obs: dict[str, list[np.ndarray]] = {c.key: [] for c in self._checks}
        self._rl2s: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rews: list[float] = []
        self._metrics: dict[str, float] = {}
        self._time = 0  # transitions so far in the episode
        self._ret = 0.0
        self._seg_start = 0  # time index of the segment's first timestep
        self._seg_len = first_len  # transitions at which the current segment is cut (None: never)
        self._terminated = False
        self._files: list[str] = []  # segments of this episode already saved

    def _name(self) -> str:
        return self.env_name if self.name_source is None else self.name_source()

    def begin(self, raw_obs: Any) -> dict[str, np.ndarray]:
        """Start a new episode at the env's reset observation; returns its first timestep."""
        first_len = self.save_every
        if self.stagger and self.save_every is not None:
            first_len = int(self._rng.integers(1, self.save_every + 1))
        self._clear(first_len)
        return self._timestep(raw_obs, np.zeros(self.action_dim, dtype=np.float32), 0.0)

    def step(
        self, raw_obs: Any, stored_action: np.ndarray, reward: float, terminated: bool, truncated: bool, info: dict
    ) -> tuple[dict[str, np.ndarray], EpisodeStats | None]:
        """Record one transition; returns the next timestep and, when the episode ended, its stats."""
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"{self._name()}: reward is {reward} at step {self._time}")
        self._actions.append(stored_action)
        self._rews.append(reward)
        self._time += 1
        self._ret += reward
        for k, v in info.items():
            if k.startswith(LOG_PREFIX):
                self._metrics[k] = float(v)
        obs = self._timestep(raw_obs, stored_action, reward)
        if terminated or truncated:
            self._terminated = bool(terminated)
            name = self._name()
            if self.save_dir is not None:
                self._files.append(save_trajectory(self.trajectory(), self.save_dir, name, self.fmt))
            return obs, EpisodeStats(name, self._ret, self._time, dict(self._metrics), tuple(self._files))
        if self.save_dir is not None and self._seg_len is not None and len(self._actions) >= self._seg_len:
            self._files.append(save_trajectory(self.trajectory(), self.save_dir, self._name(), self.fmt))
            self._obs = {k: v[-1:] for k, v in self._obs.items()}
            self._rl2s = self._rl2s[-1:]
            self._actions, self._rews = [], []
            self._seg_start, self._seg_len = self._time, self.save_every
        return obs, None

    def _checked(self, value: Any, check: _ObsCheck) -> np.ndarray:
        """``value`` as an array of its space's dtype, after its shape and finiteness were checked."""
        v = value if type(value) is np.ndarray else np.asarray(value)
        if v.shape != check.shape:
            raise ValueError(
                f"{self._name()}: observation {check.key!r} has shape {v.shape}, expected {check.shape} "
                f"(its observation_space); {_ENV_FIX}"
            )
        same_dtype = v.dtype is check.dtype or v.dtype == check.dtype
        inexact = check.inexact if same_dtype else v.dtype.kind in "fc"  # checked before a cast could hide it
        if inexact and np.count_nonzero(np.isfinite(v, out=check.finite)) != check.size:
            raise ValueError(
                f"{self._name()}: observation {check.key!r} contains NaN or inf at step {self._time}; {_ENV_FIX}"
            )
        return v if same_dtype else v.astype(check.dtype)

    def _timestep(self, raw_obs: Any, prev_action: np.ndarray, prev_reward: float) -> dict[str, np.ndarray]:
        if isinstance(raw_obs, dict):
            if raw_obs.keys() != self.obs_spaces.keys():
                raise ValueError(
                    f"{self._name()}: observation keys {sorted(raw_obs)}, expected {sorted(self.obs_spaces)}"
                )
            obs = {c.key: self._checked(raw_obs[c.key], c) for c in self._checks}
        elif self._single is not None:
            obs = {"observation": self._checked(raw_obs, self._single)}
        else:
            raise ValueError(f"{self._name()}: observation keys ['observation'], expected {sorted(self.obs_spaces)}")
        for k, v in obs.items():
            self._obs[k].append(v)
        rl2 = np.empty(1 + self.action_dim, dtype=np.float32)
        rl2[0] = prev_reward
        rl2[1:] = prev_action
        self._rl2s.append(rl2)
        time_idx = np.empty(1, dtype=np.int64)
        time_idx[0] = self._time
        obs[RL2_KEY] = rl2
        obs[TIME_KEY] = time_idx
        return obs

    def trajectory(self) -> Trajectory:
        """The current segment (the whole episode so far unless it was cut) as a Trajectory record."""
        n = len(self._actions)
        dones = np.zeros((n, 1), dtype=bool)
        if n and self._terminated:
            dones[-1] = True
        return Trajectory(
            obs={k: _stack(v) for k, v in self._obs.items()},
            rl2s=_stack(self._rl2s),
            time_idxs=np.arange(self._seg_start, self._seg_start + n + 1, dtype=np.int64)[:, None],
            actions=_stack(self._actions) if n else np.zeros((0, self.action_dim), np.float32),
            rews=np.asarray(self._rews, dtype=np.float32)[:, None].reshape(n, 1),
            dones=dones,
        )


# wrappers that gymnasium.make adds, which leave the rewards as the env pays them
_REWARDS_KEPT = (gym.wrappers.TimeLimit, gym.wrappers.OrderEnforcing, gym.wrappers.PassiveEnvChecker)


def find_amago_env(env: gym.Env) -> AMAGOEnv | None:
    """The AMAGOEnv in ``env``'s wrapper chain (``env`` itself included), or None."""
    while not isinstance(env, AMAGOEnv):
        if not isinstance(env, gym.Wrapper):
            return None
        env = env.env
    return env


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
        obs_spaces = box_observation_spaces(env.observation_space)
        self._adapter = ActionAdapter(env.action_space)
        self.discrete, self.action_dim = self._adapter.discrete, self._adapter.dim
        self.action_space = self._adapter.space
        self.observation_space = sequence_observation_space(obs_spaces, self.action_dim)
        self.recorder = EpisodeRecorder(obs_spaces, self.action_dim, self.env_name)
        self.recorder.name_source = self._current_name  # read when a file is written or an episode ends

    def configure_saving(
        self, directory: str | None, fmt: str = "npz", save_every: int | None = None, stagger: bool = False
    ) -> None:
        """Save each finished episode to ``directory`` in ``fmt`` (None turns saving off).

        ``save_every=N`` also writes a file whenever the current segment reaches N transitions
        (consecutive files share one timestep); ``stagger`` draws the first segment's length of
        each episode from [1, N] so parallel actors write at different steps.
        """
        self.recorder.configure_saving(directory, fmt, save_every, stagger)

    def hindsight_relabeler(self) -> Any:
        """The wrapped env's ``hindsight_relabeler()`` (see ``RLDataset.use_env_relabeler``), or None: it has none, or
        a wrapper other than gymnasium's bookkeeping ones sits between (it may change the rewards)."""
        env = self.env
        while isinstance(env, _REWARDS_KEPT):
            env = env.env
        offer = None if isinstance(env, gym.Wrapper) else getattr(env, "hindsight_relabeler", None)
        return offer() if callable(offer) else None

    def _current_name(self) -> str:
        return self.env_name

    @property
    def env_name(self) -> str:
        return getattr(self.env.unwrapped, "env_name", None) or self._default_name

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        raw, info = self.env.reset(seed=seed, options=options)
        self.recorder.seed(seed)
        self.recorder.env_name = self.env_name
        return self.recorder.begin(raw), info

    def step(self, action):
        stored, env_action = self._adapter.single(action)
        raw, reward, terminated, truncated, info = self.env.step(env_action)
        reward = float(reward)
        obs, stats = self.recorder.step(raw, stored, reward, terminated, truncated, info)
        if stats is not None:
            info["episode_stats"] = stats
        return obs, reward, terminated, truncated, info

    def trajectory(self) -> Trajectory:
        """The episode so far (since the last saved segment) as a Trajectory record."""
        return self.recorder.trajectory()
