"""Environments: the sequence wrapper, vectorisation, and built-in meta-RL envs (no torch here)."""

from amago_like.envs.builtin.bandit import MetaBandit
from amago_like.envs.builtin.dark_room import DarkRoom
from amago_like.envs.builtin.metaworld import KEpisodeMetaworld, Metaworld
from amago_like.envs.builtin.point_dynamics import PointDynamics
from amago_like.envs.builtin.point_goal import PointGoal
from amago_like.envs.builtin.tmaze import TMaze
from amago_like.envs.exploration import BilevelEpsilonGreedy, EpsilonGreedy, ExplorationWrapper
from amago_like.envs.vector import ENV_MODES, SequenceVectorEnv, finished_episodes, make_vector_env
from amago_like.envs.wrapper import LOG_PREFIX, AMAGOEnv, EpisodeStats, split_timestep

__all__ = [
    "ENV_MODES",
    "LOG_PREFIX",
    "AMAGOEnv",
    "BilevelEpsilonGreedy",
    "DarkRoom",
    "EpsilonGreedy",
    "ExplorationWrapper",
    "SequenceVectorEnv",
    "TMaze",
    "EpisodeStats",
    "KEpisodeMetaworld",
    "MetaBandit",
    "Metaworld",
    "PointDynamics",
    "PointGoal",
    "finished_episodes",
    "make_vector_env",
    "split_timestep",
]
