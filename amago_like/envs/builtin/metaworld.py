"""Meta-World (v3) meta-RL environments with k attempts per task.

One *episode* of :class:`KEpisodeMetaworld` is one task sampled from a
Meta-World ML benchmark, played for ``k_episodes`` consecutive *attempts*
(trials).  Between attempts the simulator is soft-reset to the same task, so a
memory-based policy can use earlier attempts to identify and solve the task.

Meta-World itself is imported lazily (on first construction), so importing this
module is cheap and only registers the gin configurables.
Benchmarks (names, building, the on-disk cache) are in
:mod:`amago_like.envs.builtin.metaworld_benchmarks`.
"""

from __future__ import annotations

import math
import pickle
import zlib
from typing import Any

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_choice, check_int, check_ints, check_number
from amago_like.config import refuse_passed
from amago_like.envs.builtin.metaworld_benchmarks import (
    ML_BENCHMARKS,
    get_benchmark,
    ml1_task_names,
    normalize_benchmark_name,
)

__all__ = [
    "ML_BENCHMARKS",
    "KEpisodeMetaworld",
    "Metaworld",
    "get_benchmark",
    "ml1_task_names",
]

SPLITS: tuple[str, ...] = ("train", "test")
#: Where training-split goals come from (see ``KEpisodeMetaworld.train_goals``).
TRAIN_GOALS: tuple[str, ...] = ("benchmark", "sampled")
#: Meta-World's hard per-episode step limit (a 501st step raises).
METAWORLD_MAX_PATH_LENGTH = 500
#: Size of a Meta-World observation.
METAWORLD_OBS_DIM = 39


# --------------------------------------------------------------------------- #
# The environment
# --------------------------------------------------------------------------- #


@gin.configurable
class KEpisodeMetaworld(gym.Env):
    """A Meta-World ML task played for ``k_episodes`` attempts per episode.

    Observation: the 39-dim Meta-World observation (float32) plus one flag that is
    1.0 on the first observation of every attempt and 0.0 otherwise.  Action: the
    Meta-World action, ``Box(-1, 1, (4,), float32)``.  Reward: the simulator reward, plus
    ``success_bonus`` on every step at which the simulator reports success.

    An attempt lasts ``max_episode_length`` steps (or less if the simulator
    truncates/terminates).  The step that ends attempt ``i`` carries
    ``info["log/Trial {i} Success"]`` (success at any step),
    ``info["log/Trial {i} Success Fraction"]`` (the share of the attempt's steps that were
    successful: whether the policy stays) and, when the simulator reports ``obj_to_target``,
    ``info["log/Trial {i} Min Distance"]``: the closest the object (for reach, the hand) came to
    the target in that attempt, in metres, which shows near misses that success (a threshold,
    0.05 m for reach) hides.  The simulator is then soft-reset to the same
    task and the first observation of attempt ``i + 1`` is returned.  The step that
    ends attempt ``k`` returns ``terminated=True`` with ``info["log/Total Successes"]``
    and ``info["log/Success"]``.  ``info["attempt"]`` is the 1-based attempt the
    returned observation belongs to.

    Of the simulator's own step info only the keys in ``info_keys`` are passed on (by default
    ``"success"``): every info key costs a vector env a batching update per step, and nothing
    downstream reads Meta-World's reward-shaping terms.

    ``self.env_name`` is the current task's class name (e.g. ``"reach-v3"``), set by
    :meth:`reset` (``None`` before the first reset).

    Args:
        benchmark: a Meta-World benchmark object (``metaworld.ML10()``, ``metaworld.ML1("reach-v3")``; its goals
            are used as they are, and ``benchmark_seed`` does not apply), or ``"ml10"``, ``"ml45"`` or an ML1
            task name such as ``"reach-v3"`` (case-insensitive).
        split: ``"train"`` or ``"test"`` task set of the benchmark.
        k_episodes: attempts per task (>= 1).
        max_episode_length: steps per attempt, 1..500 (Meta-World's hard limit).
        benchmark_seed: seed of the benchmark's goal sampling (which 50 goals each
            task class has).  Keep it fixed so that all processes agree on the task
            set; ``None`` draws fresh goals in every process.
        info_keys: keys of the simulator's step info to pass on in ``info`` when present
            (e.g. ``("success", "near_object", "obj_to_target")``).
        train_goals: ``"benchmark"``: the train split plays the benchmark's own training tasks (50 goals
            per class, Meta-World's protocol).  ``"sampled"``: every reset of the train split draws a
            fresh goal (and object placement) of the task's class from the class's own random
            range, so training covers the goal distribution instead of 50 points of it; a memory
            policy can otherwise learn those 50 positions rather than the search.  The test split
            always plays the benchmark's held-out tasks.
        success_bonus: reward added on every successful step.  Meta-World's shaped rewards are
            nearly flat at the success threshold (reach-v3: 10 inside 5 cm, 9.99 at 5.3 cm), so a
            policy that stops a few millimetres outside loses almost nothing; a bonus makes the
            threshold visible to the critic.  0 keeps the benchmark's own reward.  (On ML1 reach-v3
            it made the policy fit its training goals closer, not the held-out ones: docs/RESULTS.md.)
        task_index: play only this task of the split (an index into its task list, in Meta-World's
            order) at every reset, instead of drawing one at random; one env per index evaluates
            every held-out goal exactly once (``python -m amago_like.evaluate RUN --each_goal``).  ``None``: random.
        render_mode: ``"rgb_array"`` makes ``render()`` return the simulator's camera image
            (``render_size`` x ``render_size`` pixels; MuJoCo needs an OpenGL backend, e.g.
            ``MUJOCO_GL=egl``).  ``None``: no rendering.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        benchmark: str | Any,
        split: str = "train",
        k_episodes: int = 3,
        max_episode_length: int = 500,
        benchmark_seed: int | None = 0,
        info_keys: tuple[str, ...] = ("success",),
        train_goals: str = "benchmark",
        success_bonus: float = 0.0,
        task_index: int | None = None,
        render_mode: str | None = None,
        render_size: int = 240,
    ):
        super().__init__()
        if render_mode is not None:
            check_choice("KEpisodeMetaworld.render_mode", render_mode, tuple(self.metadata["render_modes"]))
        self.render_mode = render_mode
        self.render_size = check_int("KEpisodeMetaworld.render_size", render_size, minimum=1)
        if isinstance(info_keys, str) or not all(isinstance(k, str) for k in info_keys):
            raise ValueError(f"info_keys must be a tuple of strings, got {info_keys!r}")
        self.info_keys = tuple(info_keys)
        # a benchmark object (``metaworld.ML10()``, as the reference takes it) or its name
        bench_object = None if isinstance(benchmark, str) else _check_benchmark_object(benchmark)
        self.benchmark_name = normalize_benchmark_name(benchmark) if bench_object is None else _name_of(bench_object)
        if split not in SPLITS:
            raise ValueError(
                f"Unknown Meta-World split {split!r}; valid splits are {', '.join(repr(s) for s in SPLITS)}"
            )
        check_int("KEpisodeMetaworld.k_episodes", k_episodes, minimum=1)
        check_int("KEpisodeMetaworld.max_episode_length", max_episode_length)
        if not 1 <= max_episode_length <= METAWORLD_MAX_PATH_LENGTH:
            raise ValueError(
                f"max_episode_length must be an integer in [1, {METAWORLD_MAX_PATH_LENGTH}] "
                f"(Meta-World cannot step an episode past {METAWORLD_MAX_PATH_LENGTH} "
                f"steps), got {max_episode_length!r}"
            )
        check_choice("KEpisodeMetaworld.train_goals", train_goals, TRAIN_GOALS)
        self.sample_goals = train_goals == "sampled" and split == "train"
        self.success_bonus = check_number("KEpisodeMetaworld.success_bonus", success_bonus, minimum=0.0)
        self.split = split
        self.k_episodes = int(k_episodes)
        self.max_episode_length = int(max_episode_length)
        self.benchmark_seed = benchmark_seed

        self._benchmark = get_benchmark(self.benchmark_name, benchmark_seed) if bench_object is None else bench_object
        if split == "train":
            self._classes = self._benchmark.train_classes
            self._tasks = list(self._benchmark.train_tasks)
        else:
            self._classes = self._benchmark.test_classes
            self._tasks = list(self._benchmark.test_tasks)
        self.task_index = check_int("KEpisodeMetaworld.task_index", task_index, minimum=0, allow_none=True)
        if task_index is not None and task_index >= len(self._tasks):
            raise ValueError(
                f"KEpisodeMetaworld.task_index must be below {len(self._tasks)}, the number of "
                f"{self.benchmark_name} {split} tasks, got {task_index}"
            )
        #: Task class names of this split, in Meta-World's order.
        self.task_names: tuple[str, ...] = tuple(self._classes)

        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(METAWORLD_OBS_DIM + 1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)

        self._sims: dict[str, Any] = {}  # task class name -> simulator, created lazily
        self._sim_seed: int | None = None  # last seed passed to reset()
        self._sim: Any = None  # simulator of the current task
        self.env_name: str | None = None
        self.current_task: Any = None
        self._attempt = 0
        self._t = 0  # steps taken in the current attempt
        self._attempt_success_steps = 0
        self._attempt_min_distance = math.inf
        self._successes: list[bool] = []
        self._done = True

    # -- helpers -------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        """Tasks in this split (every class's goals): the range of ``task_index``."""
        return len(self._tasks)

    @property
    def attempt(self) -> int:
        """1-based index of the current attempt (0 before the first reset)."""
        return self._attempt

    def _seed_sim(self, name: str, sim: Any) -> None:
        if self._sim_seed is None:
            return
        # One stable, distinct stream per task class, derived from the reset seed.
        ss = np.random.SeedSequence([self._sim_seed, zlib.crc32(name.encode())])
        sim.seed(int(ss.generate_state(1)[0]))

    def _get_sim(self, name: str) -> Any:
        sim = self._sims.get(name)
        if sim is None:
            camera = {}
            if self.render_mode is not None:
                camera = dict(render_mode=self.render_mode, width=self.render_size, height=self.render_size)
            sim = self._classes[name](**camera)
            limit = getattr(sim, "max_path_length", METAWORLD_MAX_PATH_LENGTH)
            if self.max_episode_length > limit:
                sim.close()
                raise ValueError(
                    f"max_episode_length={self.max_episode_length} exceeds the "
                    f"{name} simulator's max_path_length={limit}"
                )
            self._seed_sim(name, sim)
            self._sims[name] = sim
        return sim

    def _make_obs(self, obs: np.ndarray, first: bool) -> np.ndarray:
        out = np.empty(METAWORLD_OBS_DIM + 1, dtype=np.float32)
        out[:METAWORLD_OBS_DIM] = obs
        out[METAWORLD_OBS_DIM] = 1.0 if first else 0.0
        return out

    def _start_attempt(self) -> np.ndarray:
        obs, _ = self._sim.reset()
        self._attempt += 1
        self._t = 0
        self._attempt_success_steps = 0
        self._attempt_min_distance = math.inf
        return self._make_obs(obs, first=True)

    def _with_fresh_goal(self, task: Any, sim: Any) -> Any:
        """``task`` with a fresh random vector (goal and object placement).

        Drawn as Meta-World draws the benchmark's own goals: an unfrozen reset of the simulator,
        which applies the class's own constraints (reach-v3, say, redraws goals too close to the
        puck), here from the simulator's generator (seeded by ``reset(seed=...)``)."""
        sim.set_task(task)
        sim._freeze_rand_vec = False
        sim.seeded_rand_vec = True
        sim.reset()
        data = pickle.loads(task.data)
        data["rand_vec"] = sim._last_rand_vec
        return type(task)(env_name=task.env_name, data=pickle.dumps(data))

    # -- gym API -------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # reseeds self.np_random (task sampling) if given
        if seed is not None:
            self._sim_seed = int(seed)
            for name, sim in self._sims.items():
                self._seed_sim(name, sim)
        i = self.task_index if self.task_index is not None else int(self.np_random.integers(len(self._tasks)))
        task = self._tasks[i]
        self._sim = self._get_sim(task.env_name)
        if self.sample_goals:
            task = self._with_fresh_goal(task, self._sim)
        self._sim.set_task(task)
        self.current_task = task
        self.env_name = task.env_name
        self._attempt = 0
        self._successes = []
        self._done = False
        obs = self._start_attempt()
        return obs, {"attempt": self._attempt, "env_name": self.env_name}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._sim is None:
            raise RuntimeError("KEpisodeMetaworld.step() called before reset()")
        if self._done:
            raise RuntimeError("KEpisodeMetaworld.step() called after the last attempt ended; call reset()")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            action = action.reshape(-1)
            if action.shape != (4,):
                raise ValueError(f"expected an action of shape (4,), got {action.shape}")

        obs, reward, sim_terminated, sim_truncated, sim_info = self._sim.step(action)
        self._t += 1
        info = {}
        for key in self.info_keys:
            if key in sim_info:
                info[key] = sim_info[key]
        reward = float(reward)
        if float(sim_info.get("success", 0.0)) > 0.0:
            self._attempt_success_steps += 1
            reward += self.success_bonus
        distance = sim_info.get("obj_to_target")
        if distance is not None and distance < self._attempt_min_distance:
            self._attempt_min_distance = float(distance)

        first = False
        terminated = False
        if sim_terminated or sim_truncated or self._t >= self.max_episode_length:
            success = self._attempt_success_steps > 0
            info[f"log/Trial {self._attempt} Success"] = float(success)
            info[f"log/Trial {self._attempt} Success Fraction"] = self._attempt_success_steps / self._t
            if self._attempt_min_distance < math.inf:
                info[f"log/Trial {self._attempt} Min Distance"] = self._attempt_min_distance
            self._successes.append(success)
            if self._attempt < self.k_episodes:
                obs_out = self._start_attempt()  # same task, fresh simulator episode
                first = True
            else:
                terminated = True
                self._done = True
                info["log/Total Successes"] = float(sum(self._successes))
                info["log/Success"] = float(any(self._successes))
        if not first:  # self._make_obs(obs, first=False), inlined: this runs every step
            obs_out = np.empty(METAWORLD_OBS_DIM + 1, dtype=np.float32)
            obs_out[:METAWORLD_OBS_DIM] = obs
            obs_out[METAWORLD_OBS_DIM] = 0.0
        info["attempt"] = self._attempt
        return obs_out, reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        """The current task's camera image (H, W, 3) uint8, or None without a render_mode."""
        if self.render_mode is None:
            return None
        if self._sim is None:
            raise RuntimeError("KEpisodeMetaworld.render() called before reset()")
        return self._sim.render()

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self._sim = None
        self._done = True
        super().close()

    def __repr__(self) -> str:
        return (
            f"KEpisodeMetaworld({self.benchmark_name!r}, split={self.split!r}, "
            f"k_episodes={self.k_episodes}, max_episode_length={self.max_episode_length})"
        )


def _check_benchmark_object(bench: Any) -> Any:
    if not all(hasattr(bench, a) for a in ("train_classes", "test_classes", "train_tasks", "test_tasks")):
        raise ValueError(
            f"KEpisodeMetaworld.benchmark must be a Meta-World benchmark (e.g. metaworld.ML10()) or its name, "
            f"got {bench!r}"
        )
    return bench


def _name_of(bench: Any) -> str:
    """``"ml10"`` / ``"ml45"`` for those benchmark objects; an ML1 benchmark's one task name (``"reach-v3"``)."""
    if len(bench.train_classes) == 1:
        return next(iter(bench.train_classes))
    return type(bench).__name__.lower()


@gin.configurable
def Metaworld(
    benchmark_name: str,
    split: str = "train",
    k_episodes: int = 3,
    max_episode_length: int = 500,
    render_mode: str | None = None,
    task_index: int | None = None,
):
    """A :class:`KEpisodeMetaworld` wrapped in ``AMAGOEnv`` (named after the benchmark)."""
    check_ints("Metaworld", 1, k_episodes=k_episodes, max_episode_length=max_episode_length)
    from amago_like.envs.wrapper import AMAGOEnv

    # these arguments reach KEpisodeMetaworld from here, so its own bindings of them would do nothing
    passed = {p: f"Metaworld.{p}" for p in ("split", "k_episodes", "max_episode_length", "render_mode", "task_index")}
    refuse_passed("KEpisodeMetaworld", {**passed, "benchmark": "Metaworld.benchmark_name"})

    env = KEpisodeMetaworld(
        benchmark_name,
        split=split,
        k_episodes=k_episodes,
        max_episode_length=max_episode_length,
        render_mode=render_mode,
        task_index=task_index,
    )
    return AMAGOEnv(env, env_name=env.benchmark_name)
