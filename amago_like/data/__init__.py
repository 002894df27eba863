"""Trajectory records, file formats, datasets and padded sequence batches (no networks here)."""

from amago_like.data.dataset import (
    PADDED_SAMPLING,
    Batch,
    DiskTrajDataset,
    MixtureOfDatasets,
    RLDataset,
    SequenceSampler,
    collate,
    make_dataloader,
    sample_window,
)
from amago_like.data.trajectory import (
    FORMATS,
    Trajectory,
    TrajectoryFileError,
    load_trajectory,
    save_trajectory,
)

__all__ = [
    "FORMATS",
    "PADDED_SAMPLING",
    "Batch",
    "DiskTrajDataset",
    "MixtureOfDatasets",
    "RLDataset",
    "SequenceSampler",
    "Trajectory",
    "TrajectoryFileError",
    "collate",
    "load_trajectory",
    "make_dataloader",
    "sample_window",
    "save_trajectory",
]
