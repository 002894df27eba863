"""Trajectory records, file formats, datasets and padded sequence batches (no networks here)."""

from amago_like.data.dataset import (
    PADDED_SAMPLING,
    Batch,
    DiskTrajDataset,
    MixtureOfDatasets,
    RLDataset,
    SequenceSampler,
    TrajectoryCache,
    collate,
    collate_windows,
    make_dataloader,
    sample_window,
)
from amago_like.data.trajectory import (
    FORMATS,
    NpzLayout,
    Trajectory,
    TrajectoryFileError,
    load_trajectory,
    load_trajectory_and_layout,
    read_window,
    save_trajectory,
)

__all__ = [
    "FORMATS",
    "PADDED_SAMPLING",
    "Batch",
    "DiskTrajDataset",
    "MixtureOfDatasets",
    "NpzLayout",
    "RLDataset",
    "SequenceSampler",
    "Trajectory",
    "TrajectoryCache",
    "TrajectoryFileError",
    "collate",
    "collate_windows",
    "load_trajectory",
    "load_trajectory_and_layout",
    "make_dataloader",
    "read_window",
    "sample_window",
    "save_trajectory",
]
