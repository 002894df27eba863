"""Acting: vector envs, the policy's observation and hidden state between steps, the exploration schedule.

One :class:`Rollout` per set of envs (training actors, validation, a test); :meth:`Rollout.collect` steps it
with a policy the same way for all three and returns :class:`RolloutStats`. It needs a policy with
``init_hidden_state``, ``reset_hidden_state`` and ``get_actions`` and a device; nothing of the optimizer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from amago_like.envs.exploration import AUTO_EXPLORATION, EpsilonGreedy, ExplorationWrapper, auto_explores
from amago_like.envs.vector import as_amago_env, close_envs, finished_episodes_by_env
from amago_like.envs.wrapper import RL2_KEY, TIME_KEY, EpisodeStats, split_timestep
from amago_like.logging import progress

EnvFactory = Callable[[], gym.Env]


@dataclass
class RolloutStats:
    """What one :meth:`Rollout.collect` did: the episodes that finished (and the actor that played each) and the
    env steps taken."""

    episodes: list[EpisodeStats] = field(default_factory=list)
    steps: int = 0  # per actor
    num_envs: int = 0
    actors: list[int] = field(default_factory=list)  # the index of the env that played episodes[i]
    metrics: dict[str, float] = field(default_factory=dict)  # what the stepping measured (a paced collector's waits)

    @property
    def frames(self) -> int:
        return self.steps * self.num_envs

    def summary(self, prefix: str) -> dict[str, float]:
        return summarize_episodes(self.episodes, prefix)


def summarize_episodes(episodes: list[EpisodeStats], prefix: str) -> dict[str, float]:
    """Average return, length and every logged metric, per env name and over all episodes."""
    by_name: dict[str, list[EpisodeStats]] = defaultdict(list)
    for ep in episodes:
        by_name[ep.env_name].append(ep)

    def averages(eps: list[EpisodeStats]) -> dict[str, float]:
        values: dict[str, list[float]] = defaultdict(list)
        for ep in eps:
            values["return"].append(ep.ret)
            values["episode_length"].append(ep.length)
            for k, v in ep.metrics.items():
                values[k.removeprefix("log/")].append(v)
        return {k: float(np.mean(v)) for k, v in values.items()}

    out = {f"{prefix}/{k}": v for k, v in averages(episodes).items()} if episodes else {}
    out[f"{prefix}/episodes"] = len(episodes)
    if len(by_name) > 1 or (by_name and prefix != "train"):
        for name, eps in by_name.items():
            out.update({f"{prefix}/{name}/{k}": v for k, v in averages(eps).items()})
    return out


class KeptEpisodes:
    """Saving for a rollout that counts only some of its episodes (``collect(..., episodes=N)``): the envs
    write into a hidden staging folder inside ``directory`` (``folder``), and :meth:`keep` moves the files of
    the counted episodes into ``directory``; leaving the ``with`` block removes the rest (episodes past the
    N-th, unfinished ones). Every move is a rename, so a killed run leaves in ``directory`` only complete
    files of counted episodes (and the hidden staging folder, which datasets never list).
    ``directory`` None: nothing is saved and ``folder`` is None."""

    def __init__(self, directory: str | None):
        self.directory = directory
        self.folder: str | None = None
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix=".staging-", dir=directory)  # same disk: moves are renames

    def keep(self, episodes: list[EpisodeStats]) -> list[str]:
        """Move the files of ``episodes`` into ``directory``; returns their new paths."""
        if self.directory is None:
            return []
        kept = []
        for ep in episodes:
            for path in ep.files:
                kept.append(os.path.join(self.directory, os.path.basename(path)))
                os.replace(path, kept[-1])
        return kept

    def __enter__(self) -> KeptEpisodes:
        return self

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _explore(make_env: EnvFactory, wrapper_type: type[ExplorationWrapper] | str) -> gym.Env:
    """Module-level (so async workers can unpickle it): an exploration wrapper around the sequence wrapper."""
    env = as_amago_env(make_env())
    if wrapper_type == AUTO_EXPLORATION:
        return EpsilonGreedy(env) if auto_explores(env.action_space) else env
    return wrapper_type(env)


def explores_with(envs: gym.vector.VectorEnv, wrapper_type: type[ExplorationWrapper] | str | None) -> bool:
    """Whether ``envs``, made by :func:`with_exploration` with ``wrapper_type``, carry exploration wrappers."""
    if wrapper_type == AUTO_EXPLORATION:
        return auto_explores(envs.single_action_space)
    return wrapper_type is not None


def with_exploration(
    make_env: EnvFactory | Sequence[EnvFactory], wrapper_type: type[ExplorationWrapper] | str | None
) -> EnvFactory | list[EnvFactory]:
    """``make_env`` (one factory or one per actor) with ``wrapper_type`` (or :data:`AUTO_EXPLORATION`) around each
    env it makes."""
    if wrapper_type is None:
        return make_env
    if callable(make_env):
        return functools.partial(_explore, make_env, wrapper_type)
    return [functools.partial(_explore, f, wrapper_type) for f in make_env]


class Rollout:
    """A vector env and where its episodes stand (observations and the policy's hidden state).

    ``explores``: the envs carry exploration wrappers; their schedule (env steps per actor) is part of
    :meth:`state_dict`, so a resumed run continues it instead of exploring from the start again.
    ``force_reset_every``: restart every episode once that many steps per actor passed since the last start.
    ``collects``: the training actors, whose episodes the agent learns from; they act with the live weights, every
    other rollout (validation, test, evaluation) with the averaged weights where the policy keeps them.
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        device: torch.device,
        caster: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        show_bars: bool | None = None,
        explores: bool = False,
        force_reset_every: int | None = None,
        collects: bool = False,
    ):
        self.envs, self.device, self.caster, self.collects = envs, device, caster, collects
        self.no_bars = None if show_bars else True  # None: tqdm shows bars only on a terminal
        self.explores, self.force_reset_every = explores, force_reset_every
        self.explore_steps = 0  # env steps per actor, what the exploration schedule anneals over
        #: (obs, hidden state) the next collect continues from; None: it starts fresh episodes
        self.state: tuple[dict[str, np.ndarray], Any] | None = None
        self._steps_since_reset = 0
        space = envs.single_observation_space
        self.obs_space = gym.spaces.Dict({k: v for k, v in space.spaces.items() if k not in (RL2_KEY, TIME_KEY)})
        self.rl2_space = space[RL2_KEY]
        self.action_space = envs.single_action_space

    @property
    def num_envs(self) -> int:
        return self.envs.num_envs

    def restart(self) -> None:
        """Start fresh episodes at the next :meth:`collect`."""
        self.state = None

    def _obs_to_torch(self, obs: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        env_obs, rl2s, time_idxs = split_timestep(obs)
        to = lambda x: torch.as_tensor(np.asarray(x), device=self.device).unsqueeze(1)  # noqa: E731  (N, 1, ...)
        return {k: to(v) for k, v in env_obs.items()}, to(rl2s).float(), to(time_idxs).long()

    def step(self, policy: Any, timesteps: int, sample: bool, seed: int | None = None, desc: str = "") -> RolloutStats:
        """Step every env ``timesteps`` times, continuing the episodes (a fresh start resets with ``seed``)."""
        if self.force_reset_every and self._steps_since_reset >= self.force_reset_every:
            self.state = None
        policy.eval()
        if self.state is None:
            obs, _ = self.envs.reset(seed=seed)
            hidden = policy.init_hidden_state(self.num_envs, self.device)
            self._steps_since_reset = 0
        else:
            obs, hidden = self.state
        episodes: list[EpisodeStats] = []
        actors: list[int] = []
        for _ in progress(range(timesteps), desc=desc, disable=self.no_bars, unit="env steps"):
            with self.caster():
                inputs = self._obs_to_torch(obs)
                actions, hidden = policy.get_actions(*inputs, hidden, sample=sample, averaged=not self.collects)
            obs, _, terminated, truncated, infos = self.envs.step(actions.cpu().numpy())
            done = np.logical_or(terminated, truncated)
            if done.any():
                hidden = policy.reset_hidden_state(hidden, done)
                for actor, episode in finished_episodes_by_env(infos):
                    actors.append(actor)
                    episodes.append(episode)
        policy.train()
        self.state = (obs, hidden)
        self._steps_since_reset += timesteps
        if self.explores:
            self.explore_steps += timesteps
        return RolloutStats(episodes, timesteps, self.num_envs, actors)

    def collect(
        self,
        policy: Any,
        timesteps: int,
        sample: bool = True,
        seed: int | None = None,
        desc: str = "",
        episodes: int | None = None,
    ) -> RolloutStats:
        """:meth:`step` ``timesteps`` times; with ``episodes``, stop (in chunks of 100 steps) as soon as that
        many episodes finished and keep only the first ``episodes`` of them."""
        if episodes is None:
            return self.step(policy, timesteps, sample, seed, desc)
        total = RolloutStats(num_envs=self.num_envs)
        while total.steps < timesteps and len(total.episodes) < episodes:
            part = self.step(policy, min(timesteps - total.steps, 100), sample, seed, desc)
            total.episodes += part.episodes
            total.actors += part.actors
            total.steps += part.steps
        total.episodes, total.actors = total.episodes[:episodes], total.actors[:episodes]
        return total

    def first_episodes(
        self, policy: Any, sample: bool = True, seed: int | None = None, desc: str = "", timesteps: int = 10**6
    ) -> list[EpisodeStats]:
        """Fresh episodes until every actor finished one; returns each actor's first, in actor order. Unlike
        ``collect(episodes=N)``, an actor whose episodes are short cannot stand in for a slower one.
        RuntimeError if some actor has not finished within ``timesteps`` steps."""
        self.restart()
        first: dict[int, EpisodeStats] = {}
        steps = 0
        while len(first) < self.num_envs and steps < timesteps:
            part = self.step(policy, min(timesteps - steps, 100), sample, seed, desc)
            steps += part.steps
            for actor, episode in zip(part.actors, part.episodes):
                first.setdefault(actor, episode)
        if len(first) < self.num_envs:
            waiting = sorted(set(range(self.num_envs)) - set(first))
            raise RuntimeError(f"actors {waiting} finished no episode within {timesteps} steps; their env never ends")
        return [first[i] for i in range(self.num_envs)]

    # ------------------------------------------------------------------ exploration schedule
    def state_dict(self) -> dict[str, int]:
        return {"explore_steps": self.explore_steps}

    def set_run_length(self, steps_per_actor: int) -> None:
        """Tell the exploration wrappers how many env steps each actor takes in the run (a schedule with
        ``steps_anneal = None`` anneals over a share of it)."""
        if self.explores:
            self.envs.set_attr("run_steps", [int(steps_per_actor)] * self.num_envs)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Move each actor's exploration schedule to where the checkpointed run left it; episodes restart."""
        self.explore_steps = int(state["explore_steps"])
        self.state = None
        if self.explores:
            self.envs.set_attr("total_steps", [self.explore_steps] * self.num_envs)

    def close(self) -> None:
        close_envs(self.envs)
