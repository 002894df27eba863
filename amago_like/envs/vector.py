"""Parallel copies of wrapped envs, auto-resetting in the same step an episode ends.

``sync`` / ``async`` build ``num_envs`` AMAGOEnv copies of ``make_env()`` (``sync`` in a
:class:`LeanSyncVectorEnv`, ``async`` in worker processes of one or more envs each:
:class:`GroupedAsyncVectorEnv`, or gymnasium's AsyncVectorEnv for one); ``already_vectorized``
takes a user's own batched env (``make_env()`` returns a gymnasium ``VectorEnv`` of
``num_envs`` envs) and gives it the same interface through :class:`SequenceVectorEnv`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from amago_like.checks import check_choice
from amago_like.envs.lean_sync import LeanSyncVectorEnv
from amago_like.envs.recording import FrameRecorder
from amago_like.envs.worker_groups import GroupedAsyncVectorEnv
from amago_like.envs.wrapper import (
    LOG_PREFIX,
    ActionAdapter,
    AMAGOEnv,
    EpisodeRecorder,
    EpisodeStats,
    box_observation_spaces,
    find_amago_env,
    sequence_observation_space,
)
from amago_like.threads import single_threaded_env_worker, usable_cpus

ENV_MODES = ("sync", "async", "already_vectorized")
#: ``envs_per_worker`` that spreads async envs over one worker process per usable CPU
AUTO_ENVS_PER_WORKER = "auto"


def check_envs_per_worker(envs_per_worker: int | str, mode: str, name: str = "envs_per_worker") -> None:
    """Raise (naming the setting ``name``) if ``envs_per_worker`` is not "auto" or an int >= 1, or is set for a mode
    without worker processes."""
    auto = envs_per_worker == AUTO_ENVS_PER_WORKER
    if not auto and (isinstance(envs_per_worker, bool) or not isinstance(envs_per_worker, int) or envs_per_worker < 1):
        raise ValueError(f"{name} must be {AUTO_ENVS_PER_WORKER!r} or an integer >= 1, got {envs_per_worker!r}")
    if not auto and envs_per_worker != 1 and mode != "async":
        raise ValueError(
            f"{name} = {envs_per_worker} groups the envs of worker processes, which only env_mode 'async' "
            f"has (this run's is {mode!r}): use env_mode 'async' or leave {name} at 'auto'"
        )


def resolve_envs_per_worker(envs_per_worker: int | str, num_envs: int, processes: int | None = None) -> int:
    """Envs per async worker process: ``envs_per_worker``, or for "auto" as many as spread ``num_envs`` over one
    worker per usable CPU (1 while there are no more envs than CPUs), the CPUs shared among ``processes`` such
    processes on the machine (None: the processes of a multi-process run there, ``LOCAL_WORLD_SIZE``, or 1)."""
    if envs_per_worker == AUTO_ENVS_PER_WORKER:
        processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        return -(-num_envs // max(1, usable_cpus() // processes))
    return envs_per_worker


def as_amago_env(env: gym.Env) -> gym.Env:
    """``env`` itself if an AMAGOEnv is in its wrapper chain, else ``AMAGOEnv(env)``."""
    return env if find_amago_env(env) is not None else AMAGOEnv(env)


def _wrapped_factory(
    make_env: Callable[[], gym.Env],
    save_dir: str | None,
    fmt: str,
    save_every: int | None,
    stagger: bool,
    record_to: str | None = None,
    worker: bool = False,
) -> Callable[[], gym.Env]:
    main_pid = os.getpid()

    def make() -> gym.Env:
        if worker and os.getpid() != main_pid:  # an async env's own process (gymnasium makes one env here too)
            single_threaded_env_worker()
        env = as_amago_env(make_env())
        find_amago_env(env).configure_saving(save_dir, fmt, save_every, stagger)
        return env if record_to is None else FrameRecorder(env, record_to)

    return make


def make_vector_env(
    make_env: Callable[[], gym.Env | gym.vector.VectorEnv] | Sequence[Callable[[], gym.Env]],
    num_envs: int,
    mode: str = "sync",
    save_dir: str | None = None,
    save_format: str = "npz",
    mp_context: str | None = None,
    save_every: int | None = None,
    stagger: bool = False,
    record_to: str | None = None,
    envs_per_worker: int | str = AUTO_ENVS_PER_WORKER,
    processes: int | None = None,
) -> gym.vector.VectorEnv:
    """``num_envs`` wrapped envs saving episodes to ``save_dir`` (segments of ``save_every`` transitions).

    sync / async: ``num_envs`` copies of ``make_env()`` (wrapped in AMAGOEnv if needed) in a
    :class:`LeanSyncVectorEnv` / gymnasium AsyncVectorEnv. already_vectorized: ``make_env()`` is called once and must
    return a ``VectorEnv`` of exactly ``num_envs`` envs, wrapped in :class:`SequenceVectorEnv`.
    ``record_to``: the first env's episodes are also written there as GIFs (:class:`FrameRecorder`).
    A list of ``num_envs`` factories (sync / async) gives env ``i`` its own factory ``make_env[i]``.
    ``envs_per_worker`` (async): envs stepped by each worker process (:class:`GroupedAsyncVectorEnv`), or "auto":
    one worker per usable CPU (shared among ``processes`` processes that build envs on the machine); with 1, each
    env has its own process (gymnasium's AsyncVectorEnv).
    """
    check_choice("env_mode", mode, ENV_MODES)
    check_envs_per_worker(envs_per_worker, mode)
    if num_envs < 1:
        raise ValueError(f"parallel_actors must be >= 1, got {num_envs}")
    if not callable(make_env):  # one factory per actor: manual assignment of tasks to actors
        make_env = list(make_env)
        if mode == "already_vectorized":
            raise ValueError("env_mode='already_vectorized' takes one factory of a vector env, not a list")
        if len(make_env) != num_envs or not all(callable(f) for f in make_env):
            raise ValueError(
                f"a list of env factories gives one to each actor: it needs parallel_actors = {num_envs} "
                f"callables, got {len(make_env)}"
            )
    if mode == "already_vectorized":
        if record_to is not None:
            raise ValueError(
                "recording frames needs env_mode 'sync' or 'async'; an already vectorized env renders as a batch, "
                "which amago_like does not record"
            )
        venv = make_env()
        if not isinstance(venv, gym.vector.VectorEnv):
            raise TypeError(
                f"env_mode='already_vectorized' needs make_env() to return a gymnasium VectorEnv, "
                f"got {type(venv).__name__}; use env_mode 'sync' or 'async' for single envs"
            )
        if venv.num_envs != num_envs:
            venv.close()
            raise ValueError(
                f"env_mode='already_vectorized': make_env() returned a VectorEnv of {venv.num_envs} envs, "
                f"but {num_envs} were asked for (parallel_actors); make them agree"
            )
        seq = venv if isinstance(venv, SequenceVectorEnv) else SequenceVectorEnv(venv)
        seq.configure_saving(save_dir, save_format, save_every, stagger)
        return seq
    fns = [
        _wrapped_factory(
            make_env if callable(make_env) else make_env[i],
            save_dir,
            save_format,
            save_every,
            stagger,
            record_to if i == 0 else None,
            worker=mode == "async",
        )
        for i in range(num_envs)
    ]
    same_step = AutoresetMode.SAME_STEP
    if mode == "sync":
        return LeanSyncVectorEnv(fns)
    envs_per_worker = resolve_envs_per_worker(envs_per_worker, num_envs, processes)
    if envs_per_worker == 1:  # gymnasium's, which shares observations through shared memory, is faster here
        return gym.vector.AsyncVectorEnv(fns, context=mp_context, autoreset_mode=same_step)
    return GroupedAsyncVectorEnv(fns, envs_per_worker, mp_context)


def close_envs(envs: gym.vector.VectorEnv) -> None:
    """Close ``envs``, stopping async workers by force when they are already gone or interrupted.

    Ctrl-C reaches the whole process group: the async workers stop at once, and a plain ``close``
    would then fail writing to their pipes (BrokenPipeError) or re-raise their interrupt.
    """
    try:
        envs.close()
    except (OSError, EOFError, KeyboardInterrupt):
        envs.close(terminate=True)


def env_relabeler(envs: gym.vector.VectorEnv) -> Any:
    """The hindsight relabeling that every env of ``envs`` offers alike (``AMAGOEnv.hindsight_relabeler``), or None:
    one offers none or another, or ``envs`` is a vector env of one's own (whose wrappers are not known)."""
    if isinstance(envs, SequenceVectorEnv):
        return None
    offers = envs.call("hindsight_relabeler")
    return offers[0] if offers and offers[0] is not None and all(o == offers[0] for o in offers) else None


def check_same_observations(train_envs: gym.vector.VectorEnv, val_envs: gym.vector.VectorEnv) -> None:
    """Raise (closing ``val_envs``) if the validation envs observe something else than the training envs."""
    train_space, val_space = train_envs.single_observation_space, val_envs.single_observation_space
    if val_space != train_space:
        close_envs(val_envs)
        raise ValueError(f"train and val envs disagree on observations: {train_space} vs {val_space}")


def finished_episodes(infos: dict) -> list[EpisodeStats]:
    """EpisodeStats of every env that finished an episode in this vector step."""
    return [s for _, s in finished_episodes_by_env(infos)]


def finished_episodes_by_env(infos: dict) -> list[tuple[int, EpisodeStats]]:
    """(env index, EpisodeStats) of every env that finished an episode in this vector step."""
    final = infos.get("final_info", {})
    stats, mask = final.get("episode_stats"), final.get("_episode_stats")
    if stats is None:
        return []
    return [(i, s) for i, (s, m) in enumerate(zip(stats, mask)) if m and isinstance(s, EpisodeStats)]


# ---------------------------------------------------------------------------------------------
# a user's own vector env
# ---------------------------------------------------------------------------------------------


def _env_info(infos: dict, i: int, num: int) -> dict:
    """Env ``i``'s own info out of batched vector-env infos (keys with a ``_key`` mask)."""
    out = {}
    for k, v in infos.items():
        if k.startswith("_") and k[1:] in infos:
            continue
        mask = infos.get(f"_{k}")
        if mask is not None and not mask[i]:
            continue
        if isinstance(v, dict):
            out[k] = _env_info(v, i, num)
        else:
            out[k] = v[i] if isinstance(v, np.ndarray) and v.shape[:1] == (num,) else v
    return out


def _add_info(infos: dict, info: dict, i: int, num: int) -> dict:
    """Add env ``i``'s ``info`` to batched ``infos`` as gymnasium's vector envs do (``_key`` masks)."""
    for k, v in info.items():
        if isinstance(v, dict) and k != "final_obs":  # a final observation stays one object per env
            array = _add_info(infos.get(k, {}), v, i, num)
        else:
            array = infos.get(k)
            if array is None:
                if k == "final_obs":
                    array = np.full(num, None, dtype=object)
                elif type(v) in (int, float, bool) or isinstance(v, np.number):
                    array = np.zeros(num, dtype=type(v))
                elif isinstance(v, np.ndarray):
                    array = np.zeros((num, *v.shape), dtype=v.dtype)
                else:
                    array = np.full(num, None, dtype=object)
            array[i] = v
        mask = infos.get(f"_{k}", np.zeros(num, dtype=bool))
        mask[i] = True
        infos[k], infos[f"_{k}"] = array, mask
    return infos


def _log_info(infos: dict, i: int) -> dict[str, Any]:
    """Env ``i``'s episode-metric (``log/``) entries out of batched infos."""
    out = {}
    for k, v in infos.items():
        if k.startswith(LOG_PREFIX):
            mask = infos.get(f"_{k}")
            if mask is None or mask[i]:
                out[k] = v[i]
    return out


class SequenceVectorEnv(gym.vector.VectorWrapper):
    """A user's own batched env with the interface of ``make_vector_env``'s results.

    ``env`` is a gymnasium ``VectorEnv`` of K envs whose single observation space is a Box or a
    Dict of Boxes and whose single action space is Discrete or a 1-D Box. Observations become
    dicts with ``_rl2s`` and ``_time_idx`` batched (K, ...); actions are taken as AMAGOEnv takes
    them; finished episodes are saved per env and reported as ``EpisodeStats`` in
    ``infos["final_info"]["episode_stats"]``; an env that finishes starts its next episode in the
    same step (``infos["final_obs"]`` holds the last timestep). The inner env must reset itself in
    the same step (``autoreset_mode=SAME_STEP``) or not at all (``DISABLED``: this wrapper resets
    the finished envs through ``reset(options={"reset_mask": done})``).

    Env names for metrics: each sub-env's ``unwrapped.env_name`` for a SyncVectorEnv, else the
    inner env's ``env_name`` attribute (one string, or one per env), else ``env_name``, else the
    class name; they are read when an episode starts.
    """

    def __init__(self, env: gym.vector.VectorEnv, env_name: str | None = None):
        super().__init__(env)
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        self.inner_autoreset = AutoresetMode(mode) if isinstance(mode, str) else mode
        if self.inner_autoreset not in (AutoresetMode.SAME_STEP, AutoresetMode.DISABLED):
            raise ValueError(
                f"{type(env.unwrapped).__name__} resets finished envs with autoreset_mode {self.inner_autoreset}; "
                "build it with autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP or DISABLED "
                "(and set metadata['autoreset_mode'] accordingly)"
            )
        obs_spaces = box_observation_spaces(env.single_observation_space)
        self._adapter = ActionAdapter(env.single_action_space)
        self.discrete, self.action_dim = self._adapter.discrete, self._adapter.dim
        self.single_observation_space = sequence_observation_space(obs_spaces, self.action_dim)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = self._adapter.space
        self.action_space = batch_space(self._adapter.space, self.num_envs)
        self.metadata = {**env.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self._default_name = env_name
        self.recorders = [EpisodeRecorder(obs_spaces, self.action_dim, name) for name in self.env_names()]

    def configure_saving(
        self, directory: str | None, fmt: str = "npz", save_every: int | None = None, stagger: bool = False
    ) -> None:
        """Each env saves its episodes as ``AMAGOEnv.configure_saving`` describes."""
        for rec in self.recorders:
            rec.configure_saving(directory, fmt, save_every, stagger)

    def env_names(self) -> list[str]:
        """The current name of every env, for metrics and file names."""
        base = self.env.unwrapped
        if isinstance(base, gym.vector.SyncVectorEnv):
            return [
                getattr(e.unwrapped, "env_name", None) or self._default_name or type(e.unwrapped).__name__
                for e in base.envs
            ]
        own = getattr(base, "env_name", None)
        if isinstance(own, (list, tuple)) and len(own) == self.num_envs:
            return [n or self._default_name or type(base).__name__ for n in own]
        return [(own if isinstance(own, str) else None) or self._default_name or type(base).__name__] * self.num_envs

    def _split_obs(self, raw: Any, i: int) -> Any:
        return {k: v[i] for k, v in raw.items()} if isinstance(raw, dict) else raw[i]

    @staticmethod
    def _stack(timesteps: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([ts[k] for ts in timesteps]) for k in timesteps[0]}  # each (K, ...)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        raw, infos = self.env.reset(seed=seed, options=options)
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed or [None] * self.num_envs
        names = self.env_names()
        timesteps = []
        for i, rec in enumerate(self.recorders):
            rec.seed(seeds[i])
            rec.env_name = names[i]
            timesteps.append(rec.begin(self._split_obs(raw, i)))
        return self._stack(timesteps), infos

    def step(self, actions):
        num = self.num_envs
        stored, env_actions = self._adapter(actions, num)  # (K, A), (K,) or (K, A)
        raw, rewards, terminated, truncated, infos = self.env.step(env_actions)
        rewards = np.asarray(rewards, dtype=np.float64).reshape(num)
        terminated = np.asarray(terminated, dtype=bool).reshape(num)
        truncated = np.asarray(truncated, dtype=bool).reshape(num)
        done = terminated | truncated
        same_step = self.inner_autoreset == AutoresetMode.SAME_STEP
        if same_step and done.any() and "final_obs" not in infos:
            raise ValueError(
                f"{type(self.env.unwrapped).__name__} ended episodes without infos['final_obs']; an env that "
                "resets in the same step must report the last observations there"
            )
        final_info = infos.get("final_info", {}) if same_step else infos
        timesteps, finals = [], {}
        for i, rec in enumerate(self.recorders):
            if done[i] and same_step:
                last_raw, info_i = infos["final_obs"][i], _log_info(final_info, i)
            else:
                last_raw, info_i = self._split_obs(raw, i), _log_info(infos, i)
            ts, stats = rec.step(last_raw, stored[i], rewards[i], terminated[i], truncated[i], info_i)
            timesteps.append(ts)
            if done[i]:
                finals[i] = (ts, stats)
        if not finals:
            return self._stack(timesteps), rewards, terminated, truncated, infos
        if same_step:
            out = infos
        else:
            raw, reset_infos = self.env.reset(options={"reset_mask": done})
            out = {}
            for i in range(num):
                if not done[i]:
                    _add_info(out, _env_info(infos, i, num), i, num)
        names = self.env_names()
        for i, (last_ts, stats) in finals.items():
            if same_step:
                out["final_obs"][i] = last_ts
                _add_info(out.setdefault("final_info", {}), {"episode_stats": stats}, i, num)
            else:
                final = {"final_obs": last_ts, "final_info": {**_env_info(infos, i, num), "episode_stats": stats}}
                _add_info(out, final, i, num)
                _add_info(out, _env_info(reset_infos, i, num), i, num)
            self.recorders[i].env_name = names[i]
            timesteps[i] = self.recorders[i].begin(self._split_obs(raw, i))
        return self._stack(timesteps), rewards, terminated, truncated, out
