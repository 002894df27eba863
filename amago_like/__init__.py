"""amago_like: a gin-configured sequence-model meta-RL trainer."""

from amago_like.agents import Agent, MultiTaskAgent
from amago_like.data import Batch, DiskTrajDataset, MixtureOfDatasets, RLDataset
from amago_like.envs import (
    AMAGOEnv,
    BilevelEpsilonGreedy,
    DarkRoom,
    EpsilonGreedy,
    KEpisodeMetaworld,
    MetaBandit,
    Metaworld,
    PointGoal,
    TMaze,
)
from amago_like.experiment import CheckpointError, Experiment, RunExistsError
from amago_like.nets import (
    CNNTstepEncoder,
    FFTrajEncoder,
    FFTstepEncoder,
    GRUTrajEncoder,
    IdentityTrajEncoder,
    TformerTrajEncoder,
)

__all__ = [
    "AMAGOEnv",
    "Agent",
    "Batch",
    "BilevelEpsilonGreedy",
    "CNNTstepEncoder",
    "CheckpointError",
    "DarkRoom",
    "DiskTrajDataset",
    "EpsilonGreedy",
    "Experiment",
    "FFTrajEncoder",
    "FFTstepEncoder",
    "GRUTrajEncoder",
    "IdentityTrajEncoder",
    "KEpisodeMetaworld",
    "MetaBandit",
    "Metaworld",
    "MixtureOfDatasets",
    "MultiTaskAgent",
    "PointGoal",
    "RLDataset",
    "RunExistsError",
    "TMaze",
    "TformerTrajEncoder",
]
