"""The dataset interface the learner samples from (:class:`RLDataset`), mixtures of datasets, the window a
sample covers, the refusal of an empty dataset where training needs data, and what a training process sees
of the data arriving (:class:`DataFeed`: waiting for it, a learner's frames).

The datasets of trajectory files on disk are in :mod:`amago_like.data.buffer`, the padded batches and the
DataLoader in :mod:`amago_like.data.batches`; their names stay importable from here, where they lived before.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import time
import warnings
from collections.abc import Callable
from typing import Any

import gin
import numpy as np

from amago_like.data.trajectory import Trajectory

PADDED_SAMPLING = ("none", "left", "right", "both")
# an env's hindsight relabeling: (whole trajectory, rng) -> the trajectory with the rewards it would have had under
# another task the env could have drawn, one its states reached; None where there is no such task
EnvRelabeler = Callable[[Trajectory, np.random.Generator], Trajectory | None]


class RLDataset(abc.ABC):
    """Where trajectories come from (for the learner) and go to (for the actors)."""

    #: whether this process may delete files (the FIFO bound); the experiment keeps it to the main process
    has_edit_rights: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        relabel = cls.__dict__.get("relabel")
        if relabel is None:
            return
        try:  # an override written for the older one-argument hook would otherwise fail deep inside a DataLoader worker
            inspect.signature(relabel).bind(None, None, None)
        except TypeError:
            raise TypeError(
                f"{cls.__qualname__}.relabel{inspect.signature(relabel)} must take (self, traj, rng): the dataset "
                "passes the sampling rng as well; add an rng parameter"
            ) from None

    def restrict_edit_rights(self, allowed: bool) -> None:
        """Take away the edit rights unless ``allowed`` (never grants them)."""
        self.has_edit_rights = self.has_edit_rights and allowed

    def refresh_files(self) -> None:
        """Re-read what other processes wrote since the last call (nothing to do for a dataset in memory)."""
        return None

    @abc.abstractmethod
    def sample_random_trajectory(self, rng: np.random.Generator) -> Trajectory: ...

    @property
    @abc.abstractmethod
    def save_new_trajs_to(self) -> str | None:
        """Folder new trajectories are written to, or None if this dataset takes no new data."""

    @property
    def ready_for_training(self) -> bool:
        return True

    def on_end_of_collection(self) -> dict[str, float]:
        """Called after each round of data collection; returns metrics to log."""
        return {}

    def frames_received(self) -> int | None:
        """Transitions written into this dataset's buffer by any process, as far as this object has seen them
        arrive (None: it takes no new data, or does not count). What a learner that collects nothing counts."""
        return None

    def get_description(self) -> str:
        return type(self).__name__

    #: the fraction of sampled trajectories given to the env's hindsight relabeler (:meth:`use_env_relabeler`)
    hindsight: float = 0.0
    env_relabeler: EnvRelabeler | None = None

    def use_env_relabeler(self, env_relabeler: EnvRelabeler | None) -> None:
        """Relabel a fraction ``hindsight`` of the sampled trajectories with ``env_relabeler`` (the training env's
        ``hindsight_relabeler()``; None: none)."""
        self.env_relabeler = env_relabeler

    def relabel(self, traj: Trajectory, rng: np.random.Generator) -> Trajectory:
        """Hook applied to every sampled trajectory, whole; may change it in place. Here: with probability
        ``hindsight``, the env's relabeling (when it gives None, the trajectory as it is)."""
        if not self._env_relabels or rng.random() >= self.hindsight:
            return traj
        relabeled = self.env_relabeler(traj, rng)
        return traj if relabeled is None else relabeled

    @property
    def _env_relabels(self) -> bool:
        """Whether the env's relabeling is on: there is a relabeler and a fraction above 0 to apply it to."""
        return self.env_relabeler is not None and self.hindsight > 0

    def _hindsight_note(self) -> str:
        """For descriptions: how much of what is sampled the env's relabeling changes, if it is on."""
        if not self._env_relabels:
            return ""
        return f", {self.hindsight:g} of it relabeled by {type(self.env_relabeler).__name__}"

    def _relabels(self) -> bool:
        """Whether ``relabel`` may change a trajectory (the env's relabeling is on, or the hook is replaced)."""
        return self._env_relabels or getattr(self.relabel, "__func__", None) is not RLDataset.relabel

    def sample_random_window(self, rng: np.random.Generator, seq_len: int, mode: str = "none") -> Trajectory:
        """Timesteps [start, end) of a random relabeled trajectory, placed by ``sample_window(len(traj),
        seq_len, mode, rng)``. Here: ``sample_random_trajectory``, then cut; subclasses may read less.
        The arrays may be shared with a cache: treat them as read-only."""
        traj = self.sample_random_trajectory(rng)
        start, end = sample_window(len(traj), seq_len, mode, rng)
        return traj.window(start, end)


def sample_window(n: int, seq_len: int, mode: str, rng: np.random.Generator) -> tuple[int, int]:
    """Pick timesteps [start, end) of a trajectory with n timesteps (at most seq_len of them).

    none: full-length windows where possible; right: any start, the window may run past the end;
    left: any end, the window may start before the beginning; both: either.
    """
    if mode == "none":
        start = int(rng.integers(0, max(n - seq_len, 0) + 1))
    elif mode == "right":
        start = int(rng.integers(0, n))
    elif mode == "left":
        start = int(rng.integers(1, n + 1)) - seq_len
    elif mode == "both":
        start = int(rng.integers(-seq_len + 1, n))
    else:
        raise ValueError(f"unknown padded_sampling {mode!r}; choose one of {PADDED_SAMPLING}")
    return max(start, 0), min(start + seq_len, n)


class EmptyDatasetError(ValueError):
    """A dataset pointed at a folder that holds no trajectories where training needs them."""


_OFFLINE_FIX = (
    "Point the dataset at a folder of trajectory files (TrajFolderDataset, DiskTrajDataset.demo_dirs) or collect "
    "before learning"
)


def require_data(dataset: RLDataset, why: str, fix: str = _OFFLINE_FIX) -> None:
    """EmptyDatasetError, saying ``why`` data is needed now, where the dataset looked and ``fix``, unless
    ``dataset`` holds enough to train on (after re-listing its files, for datasets on disk). For
    training that will not collect first: offline runs, ``start_collecting_at_epoch`` after
    ``start_learning_at_epoch``, a learner that waited in vain for collectors."""
    if hasattr(dataset, "refresh_files"):
        dataset.refresh_files()
    if not dataset.ready_for_training:
        raise EmptyDatasetError(f"{why}, but there is nothing to train on: {dataset.get_description()}. {fix}")


class DataFeed:
    """What a training process sees of the data arriving in ``dataset``: it waits for enough to train on
    (:meth:`wait`), and a learner that collects nothing itself (actor/learner split) reports waiting in vain
    (:meth:`starved`) and counts as its frames the transitions its buffer received (:meth:`frames`)."""

    def __init__(self, dataset: RLDataset):
        self.dataset = dataset
        self._base: int | None = None  # the learner's frames from before this feed first counted

    def wait(self, seconds: float, say: Callable[[str], None] | None = None) -> bool:
        """Re-list the dataset's files every 2 s for up to ``seconds`` until it is ready to train on; returns
        whether it is. ``say`` gets one line when the waiting starts."""
        deadline = time.time() + seconds
        while True:
            self.dataset.refresh_files()
            if self.dataset.ready_for_training:
                return True
            if time.time() >= deadline:
                return False
            if say is not None:
                say(f"waiting up to {seconds:g} s for data: {self.dataset.get_description()}")
                say = None
            time.sleep(2.0)

    def starved(self, why: str, has_trained: bool) -> dict[str, float]:
        """A learner waited in vain (``why``): EmptyDatasetError if it has never trained (no collector writes
        where it reads), else a RuntimeWarning; returns the epoch's metrics."""
        if not has_trained:
            require_data(
                self.dataset, why, "Start collectors (--mode collect) with the same run name and buffer folder"
            )
        warnings.warn(f"{why} for data in vain: this epoch makes no updates", RuntimeWarning, stacklevel=3)
        return {"learn/epoch_without_data": 1.0}

    def frames(self, frames: int) -> int:
        """A learner's frames, given its count so far: the transitions its buffer received
        (:meth:`RLDataset.frames_received`). The first call gives the larger of ``frames`` (a resumed run's
        count) and what the buffer holds; later calls add what arrived since."""
        received = self.dataset.frames_received() or 0
        if self._base is None:
            self._base = max(frames - received, 0)
        return self._base + received

    def restart(self) -> None:
        """After a loaded checkpoint: a learner's frames go on from the checkpoint's count."""
        self._base = None

    def batches(self, loader: Any) -> Any:
        """The epoch's batches from ``loader``, as they may be trained on (here: all at once; an overlapped run
        paces them on its collector, :class:`amago_like.overlap.OverlapFeed`)."""
        return loader

    def metrics(self) -> dict[str, float]:
        """What the feed measured this epoch (here: nothing)."""
        return {}


@gin.configurable
class MixtureOfDatasets(RLDataset):
    """Samples each trajectory from one of several datasets, chosen by ``sampling_weights``."""

    def __init__(self, datasets: list[RLDataset], sampling_weights: list[float], save_to_index: int = 0):
        if len(datasets) != len(sampling_weights) or not datasets:
            raise ValueError("need one sampling weight per dataset")
        w = np.asarray(sampling_weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"sampling weights must be >= 0 with a positive sum, got {sampling_weights}")
        self.datasets, self.weights, self.save_to_index = datasets, w / w.sum(), save_to_index

    @property
    def save_new_trajs_to(self) -> str | None:
        return self.datasets[self.save_to_index].save_new_trajs_to

    @property
    def ready_for_training(self) -> bool:
        return all(d.ready_for_training for d, w in zip(self.datasets, self.weights) if w > 0)

    def restrict_edit_rights(self, allowed: bool) -> None:
        for d in self.datasets:
            d.restrict_edit_rights(allowed)

    def refresh_files(self) -> None:
        for d in self.datasets:
            d.refresh_files()

    def on_end_of_collection(self) -> dict[str, float]:
        metrics = {}
        for i, d in enumerate(self.datasets):
            metrics.update({f"{k}/{i}": v for k, v in d.on_end_of_collection().items()})
        return metrics

    def frames_received(self) -> int | None:
        return self.datasets[self.save_to_index].frames_received()

    def sample_random_trajectory(self, rng: np.random.Generator) -> Trajectory:
        i = rng.choice(len(self.datasets), p=self.weights)
        return self.relabel(self.datasets[i].sample_random_trajectory(rng), rng)

    def use_env_relabeler(self, env_relabeler: EnvRelabeler | None) -> None:
        for d in self.datasets:  # each part relabels its own trajectories, at its own ``hindsight``
            d.use_env_relabeler(env_relabeler)

    def sample_random_window(self, rng: np.random.Generator, seq_len: int, mode: str = "none") -> Trajectory:
        if self._relabels():  # relabel may need the whole trajectory
            return super().sample_random_window(rng, seq_len, mode)
        i = rng.choice(len(self.datasets), p=self.weights)
        return self.datasets[i].sample_random_window(rng, seq_len, mode)

    def get_description(self) -> str:
        parts = ", ".join(f"{w:.2f} x {d.get_description()}" for d, w in zip(self.datasets, self.weights))
        return f"MixtureOfDatasets({parts})"


# names that lived in this module before it was split -> their module now (old imports keep working)
_MOVED = {
    **dict.fromkeys(("DiskTrajDataset", "TrajFolderDataset", "TrajectoryCache", "TRAJ_SUFFIXES"), "buffer"),
    **dict.fromkeys(
        ("Batch", "SequenceSampler", "collate", "collate_windows", "make_dataloader", "window_of"), "batches"
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"amago_like.data.{_MOVED[name]}"), name)
