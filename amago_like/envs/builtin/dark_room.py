"""Dark room: find an invisible goal cell by search, then remember where it was across episodes."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import gin
import gymnasium as gym
import numpy as np

from amago_like.checks import check_choice, check_ints
from amago_like.data.trajectory import Trajectory
from amago_like.envs.builtin.attempts import Attempts
from amago_like.envs.builtin.hindsight import GoalHindsight

SPLITS = ("train", "test", "all")
Cell = tuple[int, int]
# action -> (dx, dy): stay, up, down, left, right
MOVES = np.array([(0, 0), (0, 1), (0, -1), (-1, 0), (1, 0)], dtype=np.int64)


def split_goals(size: int, split: str) -> tuple[Cell, ...]:
    """Goal cells of ``split``: every cell but the centre, and of those the cells with
    ``(x + y) % 4 == 1`` are held out as ``"test"`` (a fixed quarter for odd sizes)."""
    if split not in SPLITS:
        raise ValueError(f"unknown DarkRoom split {split!r}; valid splits are {', '.join(map(repr, SPLITS))}")
    c = size // 2
    cells = [(x, y) for y in range(size) for x in range(size) if (x, y) != (c, c)]
    if split == "all":
        return tuple(cells)
    return tuple(p for p in cells if ((p[0] + p[1]) % 4 == 1) == (split == "test"))


def move(pos: Cell, action: int, size: int) -> Cell:
    """The cell reached from ``pos`` by ``action``; walls stop the agent."""
    dx, dy = MOVES[action]
    return min(max(pos[0] + int(dx), 0), size - 1), min(max(pos[1] + int(dy), 0), size - 1)


@gin.configurable
class DarkRoom(gym.Env):
    """A ``size`` x ``size`` grid with an invisible goal, played for ``k_episodes`` episodes.

    The goal cell is drawn per meta-episode from the split's goal cells (or ``goal_set``) and
    stays put; every episode lasts ``episode_length`` steps and starts from the centre (a soft
    reset returned as the observation of the episode's last step). Observation: ``[x, y]``
    scaled to [0, 1] plus a flag that is 1.0 on the first step of each episode. Actions:
    0 stay, 1 up (y + 1), 2 down (y - 1), 3 left (x - 1), 4 right (x + 1). Reward: 1.0 for each
    step that ends on the goal. Only memory of earlier steps tells where the goal is, so a good
    policy searches in the first episode and walks straight to the goal afterwards.

    Each episode's last step reports ``log/Episode i Return``; the final step adds
    ``log/Success`` (goal reached in any episode). ``reset(options={"goal": (x, y)})`` fixes
    the goal of that meta-episode. ``render_mode="rgb_array"``: ``render()`` draws the grid
    (``cell_pixels`` per cell, y up) with the goal in green and the agent in white.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        size: int = 5,
        episode_length: int = 12,
        k_episodes: int = 3,
        split: str = "train",
        goal_set: Sequence[Sequence[int]] | None = None,
        render_mode: str | None = None,
        cell_pixels: int = 16,
    ):
        check_ints(
            "DarkRoom", None, size=size, episode_length=episode_length, k_episodes=k_episodes, cell_pixels=cell_pixels
        )
        if render_mode is not None:
            check_choice("DarkRoom.render_mode", render_mode, tuple(self.metadata["render_modes"]))
        self.render_mode, self.cell_pixels = render_mode, cell_pixels
        if size < 3 or episode_length < 1 or k_episodes < 1 or cell_pixels < 1:
            raise ValueError(
                "need size >= 3, episode_length >= 1, k_episodes >= 1, cell_pixels >= 1; "
                f"got {size}, {episode_length}, {k_episodes}, {cell_pixels}"
            )
        goals = split_goals(size, split)
        if goal_set is not None:
            goals = tuple((int(x), int(y)) for x, y in goal_set)
            if not goals or any(not (0 <= x < size and 0 <= y < size) for x, y in goals):
                raise ValueError(f"goal_set must be a non-empty list of cells inside the {size}x{size} grid")
        self.size, self.episode_length, self.k, self.split = size, episode_length, k_episodes, split
        self.goals = goals
        self.centre: Cell = (size // 2, size // 2)
        self.env_name = "dark-room"
        self.observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.goal: Cell | None = None
        self.position: Cell = self.centre
        self.attempts = Attempts(k_episodes, episode_length)
        self._found = False

    def _obs(self, first: bool) -> np.ndarray:
        x, y = self.position
        return np.array([x / (self.size - 1), y / (self.size - 1), float(first)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        goal = (options or {}).get("goal")
        if goal is None:
            goal = self.goals[int(self.np_random.integers(len(self.goals)))]
        elif not (0 <= goal[0] < self.size and 0 <= goal[1] < self.size):
            raise ValueError(f"goal {goal} is outside the {self.size}x{self.size} grid")
        self.goal = (int(goal[0]), int(goal[1]))
        self.position = self.centre
        self.attempts.start()
        self._found = False
        return self._obs(first=True), {"episode": 1}

    def step(self, action):
        self.attempts.check_running("DarkRoom")
        a = int(np.asarray(action).reshape(-1)[0])
        if not 0 <= a < len(MOVES):
            raise ValueError(f"action {a} outside [0, {len(MOVES)})")
        self.position = move(self.position, a, self.size)
        reward = float(self.position == self.goal)
        self._found = self._found or reward > 0
        info: dict[str, Any] = {}
        first = self.attempts.record(reward, info)
        if first:
            self.position = self.centre
        if self.attempts.over:
            info["log/Success"] = float(self._found)
        info["episode"] = self.attempts.number
        return self._obs(first), reward, self.attempts.over, False, info

    def hindsight_relabeler(self) -> DarkRoomHindsight:
        """What relabels this env's trajectories with goal cells they reached (``RLDataset.use_env_relabeler``)."""
        return DarkRoomHindsight(self.size, self.goals)

    def render(self) -> np.ndarray | None:
        """The grid as an (H, W, 3) uint8 image, row 0 at the top (largest y); None without a render_mode."""
        if self.render_mode is None:
            return None
        grid = np.full((self.size, self.size, 3), 40, dtype=np.uint8)  # (y, x, rgb)
        if self.goal is not None:
            grid[self.goal[1], self.goal[0]] = (40, 200, 80)
        grid[self.position[1], self.position[0]] = (255, 255, 255)
        image = np.repeat(np.repeat(grid[::-1], self.cell_pixels, axis=0), self.cell_pixels, axis=1)
        image[:: self.cell_pixels] = image[:, :: self.cell_pixels] = 0  # cell borders
        return image

    # ------------------------------------------------------------------ reference returns
    def best_return(self, search: str = "goals") -> float:
        """Expected return of a hand-written explore-then-exploit policy over this env's goals.

        The policy walks to the nearest cell that could still hold the goal (skipping cells it has
        stepped on), and once it was rewarded it walks to the goal and stays; later episodes go
        straight there. It is run exactly through this env for every goal (8 tie-break variants,
        the best kept), so the value is achievable: a lower bound on the Bayes-optimal return,
        which :meth:`oracle_return` bounds from above.

        ``search`` says which cells "could hold the goal": ``"goals"``, this env's goal set (the
        reference for tasks drawn like the training ones); ``"grid"``, every cell but the start
        (the reference for held-out goals, whose cells a trained agent has never seen rewarded);
        ``"train_first"``, the training split's goal cells first and the rest of the grid after them
        (what a policy that is optimal for the training goals does on held-out ones: a gauge of how
        much of ``"grid"`` such a policy can reach).
        """
        if search not in ("goals", "grid", "train_first"):
            raise ValueError(f"search must be 'goals', 'grid' or 'train_first', got {search!r}")
        cells = self.goals if search == "goals" else split_goals(self.size, "all")
        first = split_goals(self.size, "train") if search == "train_first" else ()
        return _best_return(self.size, self.episode_length, self.k, self.goals, cells, first)

    def oracle_return(self) -> float:
        """Expected return when the goal is known from the start (upper bound on any policy)."""
        per_goal = [
            max(self.episode_length - abs(x - self.centre[0]) - abs(y - self.centre[1]) + 1, 0) for x, y in self.goals
        ]
        return self.k * float(np.mean(per_goal))

    def random_return(self) -> float:
        """Expected return of uniform random actions (Monte Carlo, 4000 meta-episodes, seed 0; cached)."""
        return _random_return(self.size, self.episode_length, self.k, self.goals)


@dataclasses.dataclass(frozen=True)
class DarkRoomHindsight(GoalHindsight):
    """Hindsight relabeling of a :class:`DarkRoom` trajectory (see :class:`GoalHindsight`): the goal is a cell it
    reached that is one of ``goals`` (the env's goal cells)."""

    size: int
    goals: tuple[Cell, ...]

    def move_ends(self, traj: Trajectory) -> np.ndarray:
        before = self.position(traj.obs[self.obs_key][:-1])
        return np.clip(before + MOVES[traj.actions.argmax(-1)], 0, self.size - 1)  # actions are stored one-hot

    def goals_at(self, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ends, (ends[:, None, :] == np.array(self.goals)[None]).all(-1).any(-1)

    def rewards(self, ends: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return (ends == goal).all(-1).astype(np.float64)

    def position(self, obs: np.ndarray) -> np.ndarray:
        return np.rint(obs[:, :2] * (self.size - 1)).astype(np.int64)


def _step_toward(pos: Cell, target: Cell, x_first: bool) -> int:
    dx, dy = target[0] - pos[0], target[1] - pos[1]
    x_move = 4 if dx > 0 else 3 if dx < 0 else 0
    y_move = 1 if dy > 0 else 2 if dy < 0 else 0
    if x_first:
        return x_move or y_move
    return y_move or x_move


def search_policy_return(
    env: DarkRoom, goal: Cell, x_first: bool, order: Sequence[Cell], first: Sequence[Cell] = ()
) -> float:
    """Return of the explore-then-exploit search policy in one meta-episode of ``env`` with ``goal``: it checks
    the nearest unchecked cell of ``order`` (ties: the earlier in ``order``), those in ``first`` before the others,
    and stays where it is once it has nothing left to check."""
    env.reset(options={"goal": goal})
    unchecked = [[c for c in order if c in first], [c for c in order if c not in first]]  # searched in this order
    known, total, done = None, 0.0, False
    while not done:
        pos = env.position
        pool = unchecked[0] or unchecked[1]
        if known is not None:
            target = known
        elif pool:
            target = min(pool, key=lambda c: abs(c[0] - pos[0]) + abs(c[1] - pos[1]))
        else:
            target = pos
        a = _step_toward(pos, target, x_first)
        reached = move(pos, a, env.size)
        _, reward, done, _, _ = env.step(a)
        total += reward
        if reward > 0:
            known = reached
        for cells in unchecked:
            if reached in cells:
                cells.remove(reached)
    return total


@functools.lru_cache(maxsize=32)
def _best_return(
    size: int,
    episode_length: int,
    k: int,
    goals: tuple[Cell, ...],
    cells: tuple[Cell, ...],
    first: tuple[Cell, ...] = (),
) -> float:
    env = DarkRoom(size, episode_length, k, goal_set=goals)
    orders = [sorted(cells), sorted(cells, reverse=True), sorted(cells, key=lambda c: (c[1], c[0]))]
    orders.append(sorted(cells, key=lambda c: (-c[1], c[0])))
    values = [
        float(np.mean([search_policy_return(env, g, x_first, order, first) for g in goals]))
        for x_first in (True, False)
        for order in orders
    ]
    return max(values)


@functools.lru_cache(maxsize=32)
def _random_return(size: int, episode_length: int, k: int, goals: tuple[Cell, ...], n: int = 4000) -> float:
    rng = np.random.default_rng(0)
    goal = np.asarray(goals, dtype=np.int64)[rng.integers(len(goals), size=n)]
    total = np.zeros(n)
    for _ in range(k):
        pos = np.full((n, 2), size // 2, dtype=np.int64)
        for _ in range(episode_length):
            pos = np.clip(pos + MOVES[rng.integers(len(MOVES), size=n)], 0, size - 1)
            total += np.all(pos == goal, axis=1)
    return float(total.mean())
