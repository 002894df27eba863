"""Exploration noise applied outside an AMAGOEnv, so saved trajectories hold the executed action.

Wrap the sequence wrapper, not the raw env: ``EpsilonGreedy(AMAGOEnv(env))``. The noisy action
then passes through ``AMAGOEnv.step``, which stores it in the trajectory and in the next
timestep's previous-action input. Each wrapper counts its own env steps, so every actor
process anneals its epsilon on the experience it collected itself.
"""

from __future__ import annotations

import abc
from typing import Any

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_below_one, check_unit_interval
from amago_like.envs.wrapper import LOG_PREFIX, AMAGOEnv, EpisodeStats, find_amago_env

EPSILON_KEY = f"{LOG_PREFIX}epsilon"  # info key (and episode metric) of the epsilon of the step
_SEED_SALT = 0x5EED_E251  # keeps the wrapper's random stream apart from the env's own seeding
_NOISE_ROWS = 1024  # Gaussian action noise is drawn this many steps at a time (one generator call)
# clip bounds as 0-d float32 arrays: numpy 2 ufuncs take these about twice as fast as Python floats
_MINUS_ONE, _ONE = np.array(-1.0, np.float32), np.array(1.0, np.float32)
#: ``Experiment.exploration_wrapper_type = "auto"``: EpsilonGreedy (Gaussian action noise) where actions are
#: continuous; none for discrete or multi-binary actions, where epsilon-greedy replaces the policy's action outright
#: instead of perturbing it, nor around an already vectorized env (wrappers go around single envs)
AUTO_EXPLORATION = "auto"
#: ``steps_anneal=None``: epsilon anneals over this share of the actor's env steps in the run, so that the same
#: schedule explores early and exploits late whatever the run's budget
RUN_SHARE_ANNEALED = 0.5


def auto_explores(action_space: gym.Space) -> bool:
    """Whether :data:`AUTO_EXPLORATION` puts EpsilonGreedy around an env with ``action_space`` (continuous actions)."""
    return isinstance(action_space, gym.spaces.Box)


def _require_amago_env(env: gym.Env) -> AMAGOEnv:
    """The AMAGOEnv in ``env``'s wrapper chain (``env`` itself included); TypeError if none."""
    found = find_amago_env(env)
    if found is None:
        raise TypeError(
            f"{type(env).__name__} has no AMAGOEnv inside; wrap AMAGOEnv(env) with the exploration "
            "wrapper, so the trajectory records the action that was executed"
        )
    return found


def linear_anneal(start: float, end: float, step: int, steps_anneal: int) -> float:
    """``start`` moving linearly to ``end`` over ``steps_anneal`` steps, then held at ``end``."""
    return start + (end - start) * min(step / steps_anneal, 1.0)


@gin.configurable
class ExplorationWrapper(gym.Wrapper, abc.ABC):
    """Base of epsilon-style exploration around an AMAGOEnv.

    Discrete actions are replaced by a uniform random action with probability epsilon;
    Box actions (AMAGOEnv's [-1, 1] space) get Gaussian noise of std epsilon and are clipped to
    [-1, 1]. With ``noise_correlation`` rho > 0 the noise is an AR(1) process of unit variance
    (``z_t = rho z_(t-1) + sqrt(1 - rho^2) w_t``), so successive steps push the same way and a point-like
    agent drifts further than a random walk of the same std; 0 draws each step's noise independently.
    Subclasses define the schedule :meth:`epsilon_schedule`. With ``randomize_eps``
    the schedule is scaled by a factor drawn once per wrapper from U[0, 1] (redrawn only when
    ``reset`` gets a seed), so parallel actors explore at different rates.

    The step that ends an episode reports the epsilon it used as ``info["log/epsilon"]`` and in
    ``info["episode_stats"].metrics`` (the AMAGOEnv inside never sees this info key); other steps
    add nothing to the info, since every key costs a vector env a batching update per step. Read
    :attr:`current_epsilon` for the epsilon of the next step.
    Bind gin parameters on the concrete classes (subclasses pass ``randomize_eps`` and ``noise_correlation``
    themselves).

    A subclass whose ``steps_anneal`` is None anneals over :data:`RUN_SHARE_ANNEALED` of :attr:`run_steps`, the
    env steps this actor takes in the whole run, which the Experiment sets before the first step.
    """

    steps_anneal: int | None = None

    def __init__(self, env: gym.Env, randomize_eps: bool = True, noise_correlation: float = 0.0):
        super().__init__(env)
        check_below_one("noise_correlation", noise_correlation)
        self.amago_env = _require_amago_env(env)  # configure trajectory saving here
        space = env.action_space
        if isinstance(space, gym.spaces.Discrete):
            self.discrete = True
            self._n, self._start = int(space.n), int(space.start)
        elif (
            isinstance(space, gym.spaces.Box)
            and len(space.shape) == 1
            and np.all(space.low == -1.0)
            and np.all(space.high == 1.0)
        ):
            self.discrete = False
        else:
            raise TypeError(f"exploration needs a Discrete or Box(-1, 1, (A,)) action space, got {space}")
        if self.discrete and noise_correlation > 0.0:
            raise ValueError(
                f"noise_correlation = {noise_correlation} applies to Gaussian noise on Box actions; this env's actions "
                "are Discrete, where exploration picks random actions: leave noise_correlation at 0"
            )
        self.randomize_eps, self.noise_correlation = randomize_eps, noise_correlation
        # AMAGOEnv right inside clips actions to [-1, 1] itself; other wrappers in between get clipped ones
        self._clip = env is not self.amago_env
        self.total_steps = 0  # env steps of this actor, across episodes
        self.run_steps: int | None = None  # env steps of this actor over the whole run (set by the Experiment)
        self.local_step = 0  # steps since the last reset
        self._reseed(None)

    def _reseed(self, seed: int | None) -> None:
        entropy = None if seed is None else [int(seed), _SEED_SALT]
        self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
        self.eps_multiplier = float(self._rng.uniform(0.0, 1.0)) if self.randomize_eps else 1.0
        self._noise = np.empty((0,), np.float32)  # rows of standard normal noise, each used once
        self._noise_row = 0
        self._noise_state: np.ndarray | None = None  # the AR(1) noise's last row (unit variance), across blocks
        self._eps = np.zeros((), np.float32)  # the step's epsilon as a 0-d array (fast to multiply by)

    def _draw_noise(self, shape: tuple[int, ...]) -> np.ndarray:
        """A new block of ``_NOISE_ROWS`` float32 standard normal draws of ``shape``, one row per step.

        Without correlation, row by row the values equal ``self._rng.standard_normal(shape, dtype=np.float32)``
        called once per step; with it, those draws are the AR(1) process's innovations, and the process carries on
        from the previous block's last row. Every row is handed out once, so it may be modified in place.
        """
        noise = self._rng.standard_normal((_NOISE_ROWS, *shape), dtype=np.float32)
        rho = np.float32(self.noise_correlation)
        if rho > 0.0:
            innovation_std = np.sqrt(np.float32(1.0) - rho * rho)
            state = self._noise_state
            if state is not None and state.shape == shape:  # a fresh stream starts from a unit-variance draw
                noise[0] = rho * state + innovation_std * noise[0]
            for t in range(1, _NOISE_ROWS):
                noise[t] = rho * noise[t - 1] + innovation_std * noise[t]
            self._noise_state = noise[-1].copy()
        self._noise = noise
        return noise

    @property
    def anneal_steps(self) -> int:
        """The env steps of this actor over which the schedule anneals: ``steps_anneal``, or with None, a share of
        the run (:data:`RUN_SHARE_ANNEALED` of :attr:`run_steps`)."""
        if self.steps_anneal is not None:
            return self.steps_anneal
        if self.run_steps is None:
            raise RuntimeError(
                f"{type(self).__name__}.steps_anneal = None anneals over the run's length, which only an Experiment "
                "sets; bind steps_anneal to a number of env steps to use the wrapper on its own"
            )
        return max(1, int(RUN_SHARE_ANNEALED * self.run_steps))

    @abc.abstractmethod
    def epsilon_schedule(self, total_steps: int, local_step: int) -> float:
        """Unscaled epsilon after ``total_steps`` env steps, at step ``local_step`` of the episode."""

    def epsilon(self, local_step: int) -> float:
        """This actor's epsilon (multiplier applied) at its current step count."""
        return self.eps_multiplier * self.epsilon_schedule(self.total_steps, local_step)

    @property
    def current_epsilon(self) -> float:
        """The epsilon the next step will use."""
        return self.epsilon(self.local_step)

    def add_exploration_noise(self, action: Any, local_step: int) -> np.ndarray:
        """``action`` with the noise of step ``local_step`` of the episode applied."""
        return self._perturb(action, self.epsilon(local_step))

    def _perturb(self, action: Any, eps: float) -> np.ndarray:
        if self.discrete:
            out = np.array(action, copy=True)
            if eps > 0.0 and self._rng.random() < eps:
                out[...] = self._start + self._rng.integers(self._n)
            return out
        return self._clipped(self._gaussian(action, eps))

    def _gaussian(self, action: Any, eps: float) -> np.ndarray:
        """``action`` (float32) plus Gaussian noise of std ``eps``, unclipped."""
        a = np.asarray(action, dtype=np.float32)
        noise, row = self._noise, self._noise_row
        if row >= len(noise) or noise.shape[1:] != a.shape:
            noise, row = self._draw_noise(a.shape), 0
        self._noise_row = row + 1
        noisy = noise[row]  # standard normal, this step's own
        self._eps[()] = eps  # float32, as numpy 2 would cast the Python float for this product anyway
        np.multiply(noisy, self._eps, out=noisy)
        np.add(noisy, a, out=noisy)
        return noisy

    @staticmethod
    def _clipped(noisy: np.ndarray) -> np.ndarray:
        """``noisy`` clipped to [-1, 1] in place (about half the cost of np.clip on small arrays)."""
        np.maximum(noisy, _MINUS_ONE, out=noisy)
        return np.minimum(noisy, _ONE, out=noisy)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._reseed(seed)
        self.local_step = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        eps = self.epsilon(self.local_step)
        if self.discrete:
            action = self._perturb(action, eps)
        elif self._clip:
            action = self._clipped(self._gaussian(action, eps))
        else:  # the AMAGOEnv right inside clips to [-1, 1] itself
            action = self._gaussian(action, eps)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.total_steps += 1
        self.local_step += 1
        if terminated or truncated:
            info[EPSILON_KEY] = eps
            stats = info.get("episode_stats")
            if isinstance(stats, EpisodeStats):
                stats.metrics[EPSILON_KEY] = eps
        return obs, reward, terminated, truncated, info


@gin.configurable
class EpsilonGreedy(ExplorationWrapper):
    """Epsilon annealed linearly from ``eps_start`` to ``eps_end`` over this actor's first
    ``steps_anneal`` env steps (then held); ``steps_anneal = None`` (the default): over the first half of the run,
    so that a short run stops exploring as surely as a long one."""

    def __init__(
        self,
        env: gym.Env,
        eps_start: float = 1.0,
        eps_end: float = 0.05,
        steps_anneal: int | None = None,
        randomize_eps: bool = True,
        noise_correlation: float = 0.0,
    ):
        for name, eps in (("eps_start", eps_start), ("eps_end", eps_end)):
            check_unit_interval(f"EpsilonGreedy.{name}", eps)
        if steps_anneal is not None and steps_anneal < 1:
            raise ValueError(f"steps_anneal must be >= 1 (or None: half the run), got {steps_anneal}")
        self.eps_start, self.eps_end, self.steps_anneal = eps_start, eps_end, steps_anneal
        super().__init__(env, randomize_eps, noise_correlation)

    def epsilon_schedule(self, total_steps: int, local_step: int) -> float:
        if self.eps_start == self.eps_end:  # a constant epsilon needs no schedule length (nor a run to set one)
            return self.eps_start
        return linear_anneal(self.eps_start, self.eps_end, total_steps, self.anneal_steps)


@gin.configurable
class BilevelEpsilonGreedy(ExplorationWrapper):
    """Epsilon annealed over training and, within each rollout, over its time index.

    Parameter names read ``eps_<training phase>_<rollout phase>``: at the start of training
    epsilon moves from ``eps_start_start`` (rollout step 0) to ``eps_start_end`` (rollout step
    ``rollout_horizon`` and later); after ``steps_anneal`` env steps of this actor it moves from
    ``eps_end_start`` to ``eps_end_end`` (``steps_anneal = None``: half the run). Both rollout endpoints anneal
    linearly in between.
    So early steps of a meta-episode explore a lot, later ones exploit.

    ``rollout_horizon = None`` (the default) takes the horizon from the env: the length of the longest rollout this
    actor has finished (a meta-episode of fixed length gives its length after the first one). Until its first
    rollout ends, an actor has no horizon to anneal over and explores at the rollout-start epsilon throughout; a
    resumed run learns the horizon again the same way.
    """

    def __init__(
        self,
        env: gym.Env,
        rollout_horizon: int | None = None,
        eps_start_start: float = 1.0,
        eps_start_end: float = 0.05,
        eps_end_start: float = 0.8,
        eps_end_end: float = 0.01,
        steps_anneal: int | None = 1_000_000,
        randomize_eps: bool = True,
        noise_correlation: float = 0.0,
    ):
        for name, eps in (
            ("eps_start_start", eps_start_start),
            ("eps_start_end", eps_start_end),
            ("eps_end_start", eps_end_start),
            ("eps_end_end", eps_end_end),
        ):
            check_unit_interval(f"BilevelEpsilonGreedy.{name}", eps)
        if (rollout_horizon is not None and rollout_horizon < 1) or (steps_anneal is not None and steps_anneal < 1):
            raise ValueError(
                "rollout_horizon and steps_anneal must be >= 1 (or None: rollout_horizon the env's rollout length, "
                f"steps_anneal half the run), got {rollout_horizon}, {steps_anneal}"
            )
        self.rollout_horizon, self.steps_anneal = rollout_horizon, steps_anneal
        self.longest_rollout = 0  # steps of the longest rollout this actor finished (rollout_horizon = None)
        self.eps_start_start, self.eps_start_end = eps_start_start, eps_start_end
        self.eps_end_start, self.eps_end_end = eps_end_start, eps_end_end
        super().__init__(env, randomize_eps, noise_correlation)

    def epsilon_schedule(self, total_steps: int, local_step: int) -> float:
        anneal = self.anneal_steps
        at_rollout_start = linear_anneal(self.eps_start_start, self.eps_end_start, total_steps, anneal)
        horizon = self.rollout_horizon if self.rollout_horizon is not None else self.longest_rollout
        if horizon == 0:  # no rollout finished yet to take the horizon from
            return at_rollout_start
        at_rollout_end = linear_anneal(self.eps_start_end, self.eps_end_end, total_steps, anneal)
        return linear_anneal(at_rollout_start, at_rollout_end, local_step, horizon)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if terminated or truncated:
            self.longest_rollout = max(self.longest_rollout, self.local_step)
        return obs, reward, terminated, truncated, info
