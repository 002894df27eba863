"""amago_like: a gin-configured sequence-model meta-RL trainer."""

from amago_like.agents import Agent
from amago_like.data import Batch, DiskTrajDataset, MixtureOfDatasets, RLDataset
from amago_like.envs import (
    AMAGOEnv,
    BilevelEpsilonGreedy,
    DarkRoom,
    EpsilonGreedy,
    KEpisodeMetaworld,
    MetaBandit,
    Metaworld,
)
from amago_like.experiment import CheckpointError, Experiment
from amago_like.nets import (
    FFTrajEncoder,
    FFTstepEncoder,
    GRUTrajEncoder,
    TformerTrajEncoder,
)

__all__ = [
    "AMAGOEnv",
    "BilevelEpsilonGreedy",
    "DarkRoom",
    "EpsilonGreedy",
    "Agent",
    "Batch",
    "CheckpointError",
    "DiskTrajDataset",
    "Experiment",
    "FFTrajEncoder",
    "FFTstepEncoder",
    "GRUTrajEncoder",
    "KEpisodeMetaworld",
    "MetaBandit",
    "Metaworld",
    "MixtureOfDatasets",
    "RLDataset",
    "TformerTrajEncoder",
]
