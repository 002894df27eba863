"""amago_like: a gin-configured sequence-model meta-RL trainer.

The public names below load on first use (PEP 562), so that ``import amago_like.cli`` (and an
example's ``--help``) does not pay for torch, accelerate and gymnasium. ``register_configurables()``
imports every module that defines a gin configurable; gin files must be parsed after it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "Agent": "amago_like.agents",
    "MultiTaskAgent": "amago_like.agents",
    "Batch": "amago_like.data",
    "DiskTrajDataset": "amago_like.data",
    "MixtureOfDatasets": "amago_like.data",
    "RLDataset": "amago_like.data",
    "TrajFolderDataset": "amago_like.data",
    "AMAGOEnv": "amago_like.envs",
    "BilevelEpsilonGreedy": "amago_like.envs",
    "DarkRoom": "amago_like.envs",
    "EpsilonGreedy": "amago_like.envs",
    "KEpisodeMetaworld": "amago_like.envs",
    "MetaBandit": "amago_like.envs",
    "Metaworld": "amago_like.envs",
    "PointDynamics": "amago_like.envs",
    "PointGoal": "amago_like.envs",
    "TMaze": "amago_like.envs",
    "CheckpointError": "amago_like.experiment",
    "Experiment": "amago_like.experiment",
    "RunExistsError": "amago_like.experiment",
    "CNNTstepEncoder": "amago_like.nets",
    "FFTrajEncoder": "amago_like.nets",
    "FFTstepEncoder": "amago_like.nets",
    "GRUTrajEncoder": "amago_like.nets",
    "IdentityTrajEncoder": "amago_like.nets",
    "TformerTrajEncoder": "amago_like.nets",
}

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
    "PointDynamics",
    "PointGoal",
    "RLDataset",
    "RunExistsError",
    "TMaze",
    "TformerTrajEncoder",
    "TrajFolderDataset",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'amago_like' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def register_configurables() -> None:
    """Import every module with a ``@gin.configurable``, so gin files and bindings can name them."""
    for module in sorted(set(_EXPORTS.values())) + ["amago_like.callbacks"]:
        importlib.import_module(module)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from amago_like.agents import Agent, MultiTaskAgent
    from amago_like.data import Batch, DiskTrajDataset, MixtureOfDatasets, RLDataset, TrajFolderDataset
    from amago_like.envs import (
        AMAGOEnv,
        BilevelEpsilonGreedy,
        DarkRoom,
        EpsilonGreedy,
        KEpisodeMetaworld,
        MetaBandit,
        Metaworld,
        PointDynamics,
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
