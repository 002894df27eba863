"""Point goal: a 2-D point robot must find a hidden goal on a half circle and return to it over k episodes."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_choice, check_ints, check_open_fraction
from amago_like.data.trajectory import Trajectory
from amago_like.envs.builtin.attempts import Attempts
from amago_like.envs.builtin.hindsight import GoalHindsight

SPLITS = ("train", "test")
REWARDS = ("dense", "sparse")
N_SECTORS = 10  # the half circle is cut into this many equal sectors of goal angles
TEST_SECTORS = (2, 5, 8)  # held out: goals never drawn in training
STEP = 0.2  # largest move per axis and step
START = np.zeros(2)


def split_sectors(split: str) -> tuple[int, ...]:
    """The indices of ``split``'s sectors among the ``N_SECTORS``."""
    return TEST_SECTORS if split == "test" else tuple(i for i in range(N_SECTORS) if i not in TEST_SECTORS)


def split_angle(u: float, split: str, span: float) -> float:
    """The angle (radians, in [0, span]) at position ``u`` in [0, 1) of ``split``'s sectors of [0, span]."""
    sectors = split_sectors(split)
    pick = u * len(sectors)
    i = min(int(pick), len(sectors) - 1)
    return (sectors[i] + (pick - i)) * span / N_SECTORS


def goal_angle(u: float, split: str) -> float:
    """The goal angle (radians, in [0, pi]) of ``split`` at position ``u`` in [0, 1) of its sectors."""
    return split_angle(u, split, math.pi)


def random_play_return(env: gym.Env, angles: list[float]) -> float:
    """Mean return of uniform random actions (numpy seed 0) over five meta-episodes per angle, the i-th reset with
    seed i and ``options={"angle": a}`` (so whatever else the env draws per meta-episode is fixed too)."""
    rng = np.random.default_rng(0)
    returns = []
    for i, angle in enumerate(angles * 5):
        env.reset(seed=i, options={"angle": angle})
        total, done = 0.0, False
        while not done:
            _, r, done, _, _ = env.step(rng.uniform(-1.0, 1.0, 2))
            total += r
        returns.append(total)
    return float(np.mean(returns))


@gin.configurable
class PointGoal(gym.Env):
    """A point robot starts each of ``k_episodes`` episodes of ``episode_length`` steps at the origin.

    A goal at distance 1 from the origin, at an angle drawn per meta-episode from the split's
    sectors of [0, pi], stays put for the whole meta-episode and is never observed. Observation:
    ``[x, y]`` plus a flag that is 1.0 on the first step of each episode; action ``Box(-1, 1, (2,))``
    moves the robot by ``0.2 * action``. Reward ``"dense"``: minus the distance to the goal after the
    move (the first reward already tells where the goal is); ``"sparse"``: 1.0 for every step that
    ends within ``goal_radius`` of the goal, else 0 (the goal must be searched for). A good policy
    finds the goal in the first episode and goes straight back to it in the later ones.

    Each episode's last step reports ``log/Episode i Return``; the final step adds ``log/Success``
    (within ``goal_radius`` at the end of the last episode). ``reset(options={"angle": a})``
    fixes the goal's angle for that meta-episode.
    """

    def __init__(
        self,
        reward: str = "dense",
        episode_length: int = 25,
        k_episodes: int = 3,
        split: str = "train",
        goal_radius: float = 0.2,
    ):
        check_choice("PointGoal.reward", reward, REWARDS)
        check_choice("PointGoal.split", split, SPLITS)
        check_ints("PointGoal", 1, episode_length=episode_length, k_episodes=k_episodes)
        check_open_fraction("PointGoal.goal_radius", goal_radius)  # the goals sit on the unit circle
        self.reward_type, self.episode_length, self.k, self.split = reward, episode_length, k_episodes, split
        self.goal_radius = goal_radius
        self.env_name = f"point-goal-{reward}"
        self.observation_space = gym.spaces.Box(-3.0, 3.0, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal = np.array([1.0, 0.0])
        self.position = START.copy()
        self.attempts = Attempts(k_episodes, episode_length)

    def _obs(self, first: bool) -> np.ndarray:
        return np.array([*self.position, float(first)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        angle = (options or {}).get("angle")
        if angle is None:
            angle = goal_angle(float(self.np_random.random()), self.split)
        self.goal = np.array([math.cos(angle), math.sin(angle)])
        self.position = START.copy()
        self.attempts.start()
        return self._obs(first=True), {}

    def reward(self, position: np.ndarray) -> float:
        return float(goal_reward(self.reward_type, np.linalg.norm(position - self.goal), self.goal_radius))

    def step(self, action):
        self.attempts.check_running("PointGoal")
        move = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0) * STEP
        self.position = np.clip(self.position + move, -3.0, 3.0)
        reward = self.reward(self.position)
        info: dict[str, Any] = {}
        first = self.attempts.record(reward, info)
        if first:
            self.position = START.copy()
        if self.attempts.over:
            info["log/Success"] = float(np.linalg.norm(self.position - self.goal) <= self.goal_radius)
        return self._obs(first), reward, self.attempts.over, False, info

    def hindsight_relabeler(self) -> PointGoalHindsight:
        """What relabels this env's trajectories with goals they reached (``RLDataset.use_env_relabeler``)."""
        return PointGoalHindsight(self.reward_type, self.split, self.goal_radius)

    # ------------------------------------------------------------------ reference returns
    def best_return(self) -> float:
        """Expected return of a hand-written searcher over the split's goals (see :func:`searcher_return`)."""
        return _reference(self.reward_type, self.episode_length, self.k, self.split, self.goal_radius, "searcher")

    def random_return(self) -> float:
        """Expected return of uniform random actions (Monte Carlo, seed 0)."""
        return _reference(self.reward_type, self.episode_length, self.k, self.split, self.goal_radius, "random")


def goal_reward(reward: str, distance: np.ndarray, goal_radius: float) -> np.ndarray:
    """The reward (``"dense"`` or ``"sparse"``) of a move that ends at ``distance`` from the goal."""
    return -distance if reward == "dense" else (distance <= goal_radius).astype(np.float64)


def in_split(angles: np.ndarray, split: str) -> np.ndarray:
    """Whether each angle (radians) is a goal angle of ``split``: in [0, pi] and in one of its sectors."""
    sectors = np.minimum(np.floor(angles / (math.pi / N_SECTORS)), N_SECTORS - 1)
    return (angles >= 0) & (angles <= math.pi) & np.isin(sectors, split_sectors(split))


@dataclasses.dataclass(frozen=True)
class PointGoalHindsight(GoalHindsight):
    """Hindsight relabeling of a :class:`PointGoal` trajectory (see :class:`GoalHindsight`): the goal is put on the
    unit circle at the angle of a move's end that lies within ``goal_radius`` of the circle, at an angle of
    ``split``'s sectors (a goal the env could have drawn there rewards that move)."""

    reward: str
    split: str
    goal_radius: float

    def move_ends(self, traj: Trajectory) -> np.ndarray:
        before = self.position(traj.obs[self.obs_key][:-1])
        return np.clip(before + np.clip(traj.actions, -1.0, 1.0) * STEP, -3.0, 3.0)

    def goals_at(self, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        angles = np.arctan2(ends[:, 1], ends[:, 0])
        near = np.abs(np.linalg.norm(ends, axis=1) - 1.0) <= self.goal_radius
        return np.stack([np.cos(angles), np.sin(angles)], axis=1), near & in_split(angles, self.split)

    def rewards(self, ends: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return goal_reward(self.reward, np.linalg.norm(ends - goal, axis=1), self.goal_radius)

    def position(self, obs: np.ndarray) -> np.ndarray:
        return obs[:, :2].astype(np.float64)


def _toward(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.clip((target - position) / STEP, -1.0, 1.0)


def searcher_return(env: PointGoal, angle: float) -> float:
    """Return of the searcher in one meta-episode with the goal at ``angle``.

    Dense: the first step's reward (a distance) fixes the goal's angle, since the goal lies on the
    unit circle in the upper half plane; then it walks to the goal and stays. Sparse: it walks to
    (1, 0), then along the circle by 0.18 rad a step until a step is rewarded, and returns to that
    spot in every later episode.
    """
    env.reset(options={"angle": angle})
    known: np.ndarray | None = None
    total, done = 0.0, False
    while not done:
        pos = env.position.copy()
        if known is not None:
            action = _toward(pos, known)
        elif env.reward_type == "dense":
            action = np.array([1.0, 0.0])
        else:  # sparse search: out to the circle, then around it
            radius, phi = float(np.linalg.norm(pos)), math.atan2(pos[1], pos[0])
            if radius < 0.99:
                action = _toward(pos, np.array([1.0, 0.0]))
            else:
                nxt = phi + 0.18
                action = _toward(pos, np.array([math.cos(nxt), math.sin(nxt)]))
        _, reward, done, _, _ = env.step(action)
        total += reward
        if known is None and env.reward_type == "dense":
            # |p - g|^2 = |p|^2 + 1 - 2 p.g with p = (0.2, 0): cos(angle) from the distance
            d, px = -reward, env.position[0]
            cos_a = float(np.clip((px**2 + 1 - d**2) / (2 * px), -1.0, 1.0))
            known = np.array([cos_a, math.sqrt(max(1 - cos_a**2, 0.0))])
        elif known is None and reward > 0:
            known = env.position.copy()
    return total


@functools.lru_cache(maxsize=32)
def _reference(reward: str, episode_length: int, k: int, split: str, goal_radius: float, which: str) -> float:
    env = PointGoal(reward, episode_length, k, split, goal_radius)
    angles = [goal_angle(u, split) for u in (np.arange(60) + 0.5) / 60]
    if which == "searcher":
        return float(np.mean([searcher_return(env, a) for a in angles]))
    return random_play_return(env, angles)
