"""Hindsight relabeling for the built-in envs whose hidden task is a goal the agent can reach: a trajectory gets the
rewards it would have had with the goal at a spot it reached (one the env could have drawn). The dataset applies an
env's relabeling to a fraction of the trajectories it samples (``RLDataset.use_env_relabeler``); see
:class:`amago_like.envs.builtin.point_goal.PointGoalHindsight` and
:class:`amago_like.envs.builtin.dark_room.DarkRoomHindsight`.
"""

from __future__ import annotations

import abc

import numpy as np

from amago_like.data.trajectory import Trajectory


class GoalHindsight(abc.ABC):
    """Relabels a trajectory of an env whose observation is ``[position..., first step of an attempt]`` and whose
    reward depends only on where each move ends and the goal.

    Where each move ends is recomputed from the observed position before it and the stored action: where the last
    move of an attempt ends is not observed (the agent is put back at the start). So a later segment of a
    meta-episode that starts right after such a move cannot be relabeled (its previous reward is unknown).
    """

    obs_key = "observation"

    @abc.abstractmethod
    def move_ends(self, traj: Trajectory) -> np.ndarray:
        """(T, D): where each move ended."""

    @abc.abstractmethod
    def goals_at(self, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of the (N, D) ``ends``: the goal the env could have drawn that a move ending there reaches (N, G),
        and whether there is one (N,)."""

    @abc.abstractmethod
    def rewards(self, ends: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """(N,): the reward of moves that end at the (N, D) ``ends`` with the goal at ``goal``."""

    @abc.abstractmethod
    def position(self, obs: np.ndarray) -> np.ndarray:
        """(N, D): the positions in the (N, obs_dim) observations."""

    def __call__(self, traj: Trajectory, rng: np.random.Generator) -> Trajectory | None:
        goal = self.reached_goal(traj, rng)
        return None if goal is None else self.with_goal(traj, goal)

    def reached_goal(self, traj: Trajectory, rng: np.random.Generator) -> np.ndarray | None:
        """A goal ``traj`` reached, drawn by ``rng`` uniformly over the moves that reached one; None: it reached none,
        or it cannot be relabeled."""
        if traj.time_idxs[0, 0] > 0 and traj.obs[self.obs_key][0, -1]:
            return None
        goals, reached = self.goals_at(self.move_ends(traj))
        return goals[rng.choice(np.flatnonzero(reached))] if reached.any() else None

    def with_goal(self, traj: Trajectory, goal: np.ndarray) -> Trajectory:
        """``traj`` with the rewards (and previous rewards) of ``goal``."""
        rews = self.rewards(self.move_ends(traj), goal)  # (T,)
        traj.rews = rews[:, None].astype(np.float32)
        traj.rl2s = traj.rl2s.copy()
        traj.rl2s[1:, 0] = rews
        if traj.time_idxs[0, 0] > 0:  # a later segment: the move before it ended where it starts
            traj.rl2s[0, 0] = self.rewards(self.position(traj.obs[self.obs_key][:1]), goal)[0]
        return traj
