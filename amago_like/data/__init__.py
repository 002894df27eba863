"""Trajectory records, file formats, datasets and padded sequence batches (no networks here)."""

from amago_like.data.batches import Batch, SequenceSampler, collate, collate_windows, make_dataloader
from amago_like.data.buffer import DiskTrajDataset, TrajectoryCache, TrajFolderDataset
from amago_like.data.dataset import (
    PADDED_SAMPLING,
    EmptyDatasetError,
    MixtureOfDatasets,
    RLDataset,
    require_data,
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
    "EmptyDatasetError",
    "MixtureOfDatasets",
    "NpzLayout",
    "RLDataset",
    "SequenceSampler",
    "Trajectory",
    "TrajFolderDataset",
    "TrajectoryCache",
    "TrajectoryFileError",
    "collate",
    "collate_windows",
    "load_trajectory",
    "load_trajectory_and_layout",
    "make_dataloader",
    "read_window",
    "require_data",
    "sample_window",
    "save_trajectory",
]
