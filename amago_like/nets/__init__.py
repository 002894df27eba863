"""Network modules: timestep encoders, trajectory encoders, transformer pieces, heads, distributions."""

from amago_like.nets.heads import Actor, CriticEnsemble
from amago_like.nets.traj_encoders import (
    FFTrajEncoder,
    GRUTrajEncoder,
    IdentityTrajEncoder,
    TformerTrajEncoder,
    TrajEncoder,
)
from amago_like.nets.transformer import KVCache, RotaryEmb, SigmaReparamLinear
from amago_like.nets.tstep_encoders import CNNTstepEncoder, FFTstepEncoder, TstepEncoder
from amago_like.nets.values import PopArt, ValueBins

__all__ = [
    "TstepEncoder",
    "FFTstepEncoder",
    "CNNTstepEncoder",
    "TrajEncoder",
    "TformerTrajEncoder",
    "GRUTrajEncoder",
    "FFTrajEncoder",
    "IdentityTrajEncoder",
    "KVCache",
    "RotaryEmb",
    "SigmaReparamLinear",
    "Actor",
    "CriticEnsemble",
    "PopArt",
    "ValueBins",
]
