"""Network modules: timestep encoders, trajectory encoders, transformer pieces."""

from amago_like.nets.traj_encoders import FFTrajEncoder, GRUTrajEncoder, TformerTrajEncoder, TrajEncoder
from amago_like.nets.transformer import KVCache
from amago_like.nets.tstep_encoders import FFTstepEncoder, TstepEncoder

__all__ = [
    "TstepEncoder",
    "FFTstepEncoder",
    "TrajEncoder",
    "TformerTrajEncoder",
    "GRUTrajEncoder",
    "FFTrajEncoder",
    "KVCache",
]
