"""Point dynamics: a 2-D point robot whose actions are turned by a hidden angle, drawn per meta-episode, must
reach visible goals over k episodes (a task whose dynamics, not its goal, must be inferred)."""

from __future__ import annotations

import functools
import math
from typing import Any

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_choice, check_ints, check_open_fraction
from amago_like.envs.builtin.attempts import Attempts
from amago_like.envs.builtin.point_goal import SPLITS, START, STEP, random_play_return, split_angle

LIMIT = 3.0  # the robot's plane is [-LIMIT, LIMIT]^2


def hidden_angle(u: float, split: str) -> float:
    """The hidden angle (radians, in [0, 2 pi)) of ``split`` at position ``u`` in [0, 1) of its sectors."""
    return split_angle(u, split, 2 * math.pi)


def rotation(angle: float) -> np.ndarray:  # (2, 2)
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


@gin.configurable
class PointDynamics(gym.Env):
    """A point robot starts each of ``k_episodes`` episodes of ``episode_length`` steps at the origin, with a
    new goal drawn uniformly on the unit circle and shown in the observation.

    An action ``a`` in ``Box(-1, 1, (2,))`` moves the robot by ``0.2 * R(angle) a``: the controls are turned by an
    angle drawn per meta-episode from the split's sectors of the full turn (held out: sectors never drawn in
    training), which is never observed. Reward: minus the distance to the goal after the move. Observation:
    ``[x, y, goal_x, goal_y]`` plus a flag that is 1.0 on the first step of each episode. A policy without memory
    cannot tell which way its actions will move it; one with memory reads the angle off its first move (the
    previous action and the change of position) and keeps it for the later episodes.

    Each episode's last step reports ``log/Episode i Return``; the final step adds ``log/Success`` (within
    ``goal_radius`` of the last episode's goal at its end). ``reset(options={"angle": a})`` fixes the hidden
    angle for that meta-episode. ``show_angle`` (a diagnostic) appends its cosine and sine to the observation, so
    that a policy without memory can steer: it separates learning to infer the angle from learning to steer.
    ``show_previous`` (a diagnostic) appends the position before the last move, so that one observation and the
    previous action tell the angle without comparing two steps.
    """

    def __init__(
        self,
        episode_length: int = 25,
        k_episodes: int = 3,
        split: str = "train",
        goal_radius: float = 0.2,
        show_angle: bool = False,
        show_previous: bool = False,
    ):
        check_choice("PointDynamics.split", split, SPLITS)
        check_ints("PointDynamics", 1, episode_length=episode_length, k_episodes=k_episodes)
        check_open_fraction("PointDynamics.goal_radius", goal_radius)  # the goals sit on the unit circle
        self.episode_length, self.k, self.split, self.goal_radius = episode_length, k_episodes, split, goal_radius
        self.show_angle, self.show_previous = show_angle, show_previous
        self.env_name = "point-dynamics"
        size = 5 + 2 * show_angle + 2 * show_previous
        self.observation_space = gym.spaces.Box(-LIMIT, LIMIT, (size,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.angle = 0.0
        self.turn = rotation(0.0)
        self.goal = np.array([1.0, 0.0])
        self.position = self.previous = START.copy()
        self.attempts = Attempts(k_episodes, episode_length)

    def _obs(self, first: bool) -> np.ndarray:
        shown = (math.cos(self.angle), math.sin(self.angle)) if self.show_angle else ()
        previous = self.previous if self.show_previous else ()
        return np.array([*self.position, *self.goal, float(first), *shown, *previous], dtype=np.float32)

    def _new_episode(self) -> None:
        goal_angle = 2 * math.pi * float(self.np_random.random())
        self.goal = np.array([math.cos(goal_angle), math.sin(goal_angle)])
        self.position = self.previous = START.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        angle = (options or {}).get("angle")
        if angle is None:
            angle = hidden_angle(float(self.np_random.random()), self.split)
        self.angle, self.turn = float(angle), rotation(angle)
        self._new_episode()
        self.attempts.start()
        return self._obs(first=True), {}

    def step(self, action):
        self.attempts.check_running("PointDynamics")
        command = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.previous = self.position
        self.position = np.clip(self.position + STEP * (self.turn @ command), -LIMIT, LIMIT)
        distance = float(np.linalg.norm(self.position - self.goal))
        info: dict[str, Any] = {}
        first = self.attempts.record(-distance, info)
        if first:
            self._new_episode()
        if self.attempts.over:
            info["log/Success"] = float(distance <= self.goal_radius)
        return self._obs(first), -distance, self.attempts.over, False, info

    # ------------------------------------------------------------------ reference returns
    def best_return(self) -> float:
        """Expected return of a hand-written controller that identifies the angle (see :func:`identifier_return`)."""
        return _reference(self.episode_length, self.k, self.split, self.goal_radius, "identifier")

    def random_return(self) -> float:
        """Expected return of uniform random actions (Monte Carlo, seed 0)."""
        return _reference(self.episode_length, self.k, self.split, self.goal_radius, "random")

    def memoryless_return(self) -> float:
        """Expected return of a controller that drives straight at each goal as if the angle were 0."""
        return _reference(self.episode_length, self.k, self.split, self.goal_radius, "memoryless")


def identifier_return(env: PointDynamics, angle: float, seed: int, memory: bool = True) -> float:
    """Return of one meta-episode with the hidden ``angle``: the first step commands (1, 0) and reads the angle
    off the move; every later step commands the move toward the goal turned back by it. With ``memory=False``
    it never learns the angle and steers as if it were 0."""
    env.reset(seed=seed, options={"angle": angle})
    known: float | None = None if memory else 0.0
    total, done = 0.0, False
    while not done:
        before = env.position.copy()
        if known is None:
            command = np.array([1.0, 0.0])
        else:
            command = np.clip(rotation(-known) @ (env.goal - env.position) / STEP, -1.0, 1.0)
        _, reward, done, _, _ = env.step(command)
        total += reward
        if known is None:
            move = env.position - before
            known = math.atan2(move[1], move[0])
    return total


@functools.lru_cache(maxsize=32)
def _reference(episode_length: int, k: int, split: str, goal_radius: float, which: str) -> float:
    env = PointDynamics(episode_length, k, split, goal_radius)
    angles = [hidden_angle(u, split) for u in (np.arange(60) + 0.5) / 60]
    if which != "random":
        return float(np.mean([identifier_return(env, a, i, which == "identifier") for i, a in enumerate(angles)]))
    return random_play_return(env, angles)
