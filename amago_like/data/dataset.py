"""Disk-backed trajectory datasets and the padded sequence batches the learner trains on."""

from __future__ import annotations

import abc
import functools
import math
import os
import shutil
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TypeVar

import gin
import numpy as np
import torch

from amago_like.checks import check_choice, check_int, check_number, storage_error
from amago_like.data.trajectory import (
    NpzLayout,
    Trajectory,
    TrajectoryFileError,
    count_transitions,
    load_trajectory_and_layout,
    read_window,
)

PADDED_SAMPLING = ("none", "left", "right", "both")
_REFRESHES_WHEN_DRY = 3  # times a sampler re-lists the folders before it reports an empty dataset
_T = TypeVar("_T")


class RLDataset(abc.ABC):
    """Where trajectories come from (for the learner) and go to (for the actors)."""

    #: whether this process may delete files (the FIFO bound); the experiment keeps it to the main process
    has_edit_rights: bool = True

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

    def relabel(self, traj: Trajectory) -> Trajectory:
        """Hook applied to every sampled trajectory (identity here). It sees the whole trajectory."""
        return traj

    def _relabels(self) -> bool:
        """Whether ``relabel`` is anything but the identity above (overridden or replaced)."""
        return getattr(self.relabel, "__func__", None) is not RLDataset.relabel

    def sample_random_window(self, rng: np.random.Generator, seq_len: int, mode: str = "none") -> Trajectory:
        """Timesteps [start, end) of a random relabeled trajectory, placed by ``sample_window(len(traj),
        seq_len, mode, rng)``. Here: ``sample_random_trajectory``, then cut; subclasses may read less.
        The arrays may be shared with a cache: treat them as read-only."""
        traj = self.sample_random_trajectory(rng)
        start, end = sample_window(len(traj), seq_len, mode, rng)
        return traj.window(start, end)


class TrajectoryCache:
    """Loaded trajectories by file path, holding at most ``max_bytes`` of arrays; the least recently
    used go first. Safe because trajectory files never change once written (a deleted file must be
    ``discard``-ed by the owner). Cached arrays are made read-only: windows cut from them share them."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.nbytes = max_bytes, 0
        self._items: OrderedDict[str, tuple[Trajectory, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, path: str) -> bool:
        return path in self._items

    def get(self, path: str) -> Trajectory | None:
        item = self._items.get(path)
        if item is None:
            return None
        self._items.move_to_end(path)
        return item[0]

    def put(self, path: str, traj: Trajectory) -> bool:
        """Cache ``traj`` (evicting the least recently used as needed); False if it alone exceeds the bound."""
        size = traj.nbytes
        if size > self.max_bytes:
            return False
        self.discard(path)
        while self.nbytes + size > self.max_bytes:
            _, (_, freed) = self._items.popitem(last=False)
            self.nbytes -= freed
        for a in (*traj.obs.values(), traj.rl2s, traj.time_idxs, traj.actions, traj.rews, traj.dones):
            a.flags.writeable = False
        self._items[path] = (traj, size)
        self.nbytes += size
        return True

    def discard(self, path: str) -> None:
        item = self._items.pop(path, None)
        if item is not None:
            self.nbytes -= item[1]

    def retain(self, paths: set[str]) -> None:
        """Drop every entry whose path is not in ``paths``."""
        for path in [p for p in self._items if p not in paths]:
            self.discard(path)


@gin.configurable
class DiskTrajDataset(RLDataset):
    """Trajectory files under ``{dset_root}/{dset_name}/buffer/{fifo,protected}``.

    ``fifo/`` holds at most ``dset_max_size`` files (oldest deleted first, by processes with
    edit rights); ``protected/`` is never deleted. Unreadable files are skipped with one
    warning each and never count as data. Hidden ``.*.tmp`` files (writes in progress, or left
    by a killed writer) are never listed; those older than ``stale_tmp_age_s`` are removed
    from ``fifo/`` when the size bound is enforced.

    ``demo_dirs``: folders of trajectory files made elsewhere (demonstrations; e.g. written by
    ``Experiment.evaluate_test(..., save_trajs_to=DIR)`` or ``eval_split.py --save_trajs_to DIR``),
    sampled along with the buffer like ``protected/``: never written, never deleted. Each must hold
    trajectory files. To train on such a folder alone (offline), use :class:`TrajFolderDataset`.

    Reading: each process (every DataLoader worker included) keeps its own LRU cache of loaded
    trajectories of at most ``cache_mb`` MB (0 turns it off); a cached file that has since been
    deleted is never sampled again. The first read of a file in a process loads (and checks) it
    whole; after that, windows of an uncompressed ``.npz`` file that is not cached are read
    straight from the file, only the rows they need. Windows are only cut before relabeling
    when ``relabel`` is the identity; otherwise the whole trajectory is relabeled, then cut.
    """

    def __init__(
        self,
        dset_root: str,
        dset_name: str,
        dset_max_size: int = 15_000,
        dset_min_size: int = 1,
        has_edit_rights: bool = True,
        stale_tmp_age_s: float = 3600.0,
        cache_mb: float = 256.0,
        demo_dirs: tuple[str, ...] = (),
    ):
        if not cache_mb >= 0:
            raise ValueError(f"DiskTrajDataset.cache_mb must be >= 0, got {cache_mb!r}")
        folder = os.path.join(dset_root, dset_name)
        if not os.path.exists(os.path.join(folder, "buffer")) and _trajectory_files(folder):
            # pointed at a folder of trajectory files: do not make an empty buffer inside it and report 0
            raise EmptyDatasetError(
                f"{folder} holds {len(_trajectory_files(folder))} trajectory files itself, but DiskTrajDataset "
                f"reads a replay buffer, {os.path.join(folder, 'buffer', '{fifo,protected}')}, which is not there. "
                f"Train on those files with TrajFolderDataset({folder!r}) (offline), or add them as "
                f"demonstrations to a run's buffer: DiskTrajDataset(..., demo_dirs=[{folder!r}])"
            )
        self.demo_dirs = _check_demo_dirs("DiskTrajDataset.demo_dirs", demo_dirs)
        check_int("DiskTrajDataset.dset_max_size", dset_max_size, minimum=1)
        check_int("DiskTrajDataset.dset_min_size", dset_min_size, minimum=0)
        check_number("DiskTrajDataset.stale_tmp_age_s", stale_tmp_age_s, minimum=0)
        self.dset_root, self.dset_name = dset_root, dset_name
        self.dset_max_size, self.dset_min_size = dset_max_size, dset_min_size
        self.has_edit_rights = has_edit_rights
        self.stale_tmp_age_s = stale_tmp_age_s
        self.buffer_dir = os.path.join(dset_root, dset_name, "buffer")
        self.fifo_dir = os.path.join(self.buffer_dir, "fifo")
        self.protected_dir = os.path.join(self.buffer_dir, "protected")
        for d in (self.fifo_dir, self.protected_dir):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                raise storage_error(e, d, "remove old runs from that disk") from None
        self.cache_mb = cache_mb
        self._cache = TrajectoryCache(int(cache_mb * 2**20))
        self._layouts: dict[str, NpzLayout] = {}  # where the rows lie in files already read once
        self._bad_files: set[str] = set()
        self._files: list[str] = []
        self._counted: set[str] = set()  # fifo files already in frames_received()
        self._received = 0
        self.refresh_files()

    def __getstate__(self) -> dict:
        # a process this dataset is sent to (a spawned DataLoader worker) starts with its own empty cache
        state = self.__dict__.copy()
        state["_cache"], state["_layouts"] = TrajectoryCache(self._cache.max_bytes), {}
        return state

    @property
    def save_new_trajs_to(self) -> str:
        return self.fifo_dir

    @staticmethod
    def _list(folder: str) -> list[str]:
        names = sorted(n for n in os.listdir(folder) if n.endswith(TRAJ_SUFFIXES) and not n.startswith("."))
        return [os.path.join(folder, n) for n in names]

    def _read_only_dirs(self) -> list[str]:
        """Folders whose files are sampled but never deleted: ``protected/`` and ``demo_dirs``."""
        return [self.protected_dir, *self.demo_dirs]

    def refresh_files(self) -> None:
        """Re-read the file lists from disk (new files from actors, deletions by others)."""
        self._fifo = self._list(self.fifo_dir)
        kept = [f for d in self._read_only_dirs() for f in self._list(d)]
        self._files = [f for f in self._fifo + kept if f not in self._bad_files]
        listed = set(self._files)
        self._cache.retain(listed)
        self._layouts = {p: lay for p, lay in self._layouts.items() if p in listed}

    def __len__(self) -> int:
        return len(self._files)

    @property
    def files(self) -> list[str]:
        """The trajectory files of the last refresh: ``fifo/`` then ``protected/``, each by age."""
        return list(self._files)

    @property
    def ready_for_training(self) -> bool:
        return len(self) >= max(self.dset_min_size, 1)

    def on_end_of_collection(self) -> dict[str, float]:
        deleted = self.enforce_max_size() if self.has_edit_rights else 0
        self.refresh_files()
        return {"buffer/trajectories": len(self), "buffer/deleted": deleted}

    def frames_received(self) -> int:
        """Transitions in the files that arrived in ``fifo/``, each counted once, the first time this method
        lists it (reading only its header where the format allows); a file written and deleted between two
        calls is missed."""
        fifo = self._list(self.fifo_dir)
        for path in fifo:
            if path in self._counted:
                continue
            try:
                self._received += count_transitions(path)
            except (FileNotFoundError, TrajectoryFileError):  # deleted meanwhile, or no data (sampling warns)
                continue
            self._counted.add(path)
        self._counted.intersection_update(fifo)  # names are unique: a file gone never comes back
        return self._received

    def enforce_max_size(self) -> int:
        """Delete the oldest fifo files beyond ``dset_max_size`` (and stale temporary files);
        returns how many trajectory files were deleted."""
        fifo = self._list(self.fifo_dir)
        excess = fifo[: max(0, len(fifo) - self.dset_max_size)]
        for path in excess:
            try:
                os.remove(path)
            except FileNotFoundError:  # another process got there first
                pass
        self.remove_stale_tmp_files()
        return len(excess)

    def remove_stale_tmp_files(self) -> int:
        """Delete hidden ``.*.tmp`` files in ``fifo/`` older than ``stale_tmp_age_s`` (left by killed
        writers; a live write is seconds old); returns how many were deleted."""
        cutoff = time.time() - self.stale_tmp_age_s
        removed = 0
        for name in os.listdir(self.fifo_dir):
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            path = os.path.join(self.fifo_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.remove(path)
                    removed += 1
            except FileNotFoundError:  # renamed into place or removed by another process meanwhile
                pass
        return removed

    def sample_random_trajectory(self, rng: np.random.Generator) -> Trajectory:
        """A random whole trajectory, relabeled; its arrays are the caller's own."""
        return self._sample(rng, self._read_whole)

    def sample_random_window(self, rng: np.random.Generator, seq_len: int, mode: str = "none") -> Trajectory:
        if self._relabels():  # relabel may need the whole trajectory
            return super().sample_random_window(rng, seq_len, mode)
        return self._sample(rng, lambda path: self._read_window(path, rng, seq_len, mode))

    def _sample(self, rng: np.random.Generator, read: Callable[[str], _T]) -> _T:
        """``read(path)`` of a random listed file, skipping deleted and unreadable ones."""
        for attempt in range(_REFRESHES_WHEN_DRY + 1):
            if attempt:  # every listed file vanished (the FIFO bound turned over): look at the disk again
                self.refresh_files()
            while self._files:
                path = self._files[rng.integers(len(self._files))]
                try:
                    return read(path)
                except FileNotFoundError:
                    self._forget(path)  # deleted by the FIFO bound since the last refresh
                except TrajectoryFileError as e:
                    if path not in self._bad_files:
                        warnings.warn(f"skipping unreadable trajectory file: {e}", stacklevel=3)
                    self._bad_files.add(path)
                    self._forget(path)
        raise RuntimeError(f"no readable trajectories in {self.buffer_dir}")

    def _forget(self, path: str) -> None:
        self._files.remove(path)
        self._cache.discard(path)
        self._layouts.pop(path, None)

    def _load(self, path: str) -> tuple[Trajectory, bool]:
        """(the trajectory in ``path``, whether its arrays are the cache's), from the cache when there."""
        traj = self._cache.get(path)
        if traj is not None:
            if not os.path.exists(path):  # deleted since it was cached
                raise FileNotFoundError(path)
            return traj, True
        traj, layout = load_trajectory_and_layout(path)
        if layout is not None:
            self._layouts[path] = layout
        return traj, self._cache.put(path, traj)

    def _read_whole(self, path: str) -> Trajectory:
        traj, shared = self._load(path)
        return self.relabel(traj.copy() if shared else traj)

    def _read_window(self, path: str, rng: np.random.Generator, seq_len: int, mode: str) -> Trajectory:
        layout = self._layouts.get(path)
        if layout is not None and path not in self._cache:  # read only the window's rows
            start, end = sample_window(layout.n, seq_len, mode, rng)
            return read_window(path, layout, start, end)
        traj, _ = self._load(path)
        start, end = sample_window(len(traj), seq_len, mode, rng)
        return traj.window(start, end)

    def delete_from_disk(self) -> None:
        if not self.has_edit_rights:
            raise PermissionError(f"this process has no edit rights on {self.buffer_dir}")
        # the buffer only: by default it lives inside the run folder, whose checkpoints and metrics stay
        shutil.rmtree(self.buffer_dir, ignore_errors=True)
        self._files = []
        self._cache.retain(set())
        self._layouts = {}

    def get_description(self) -> str:
        demos = f", demonstrations from {', '.join(self.demo_dirs)}" if self.demo_dirs else ""
        return f"DiskTrajDataset({self.buffer_dir}: {len(self)} trajectories, max {self.dset_max_size}{demos})"


TRAJ_SUFFIXES = (".npz", ".traj")


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


def _trajectory_files(folder: str) -> list[str]:
    """The trajectory files directly in ``folder`` ([] if it is not a folder)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.endswith(TRAJ_SUFFIXES) and not n.startswith("."))


def _check_demo_dirs(param: str, folders: str | tuple[str, ...] | list[str]) -> list[str]:
    """``folders`` as a list of absolute paths; EmptyDatasetError naming the folder (and what is in it)
    unless each one holds trajectory files."""
    if isinstance(folders, str):
        folders = [folders]
    checked = []
    for folder in folders:
        path = os.path.abspath(os.path.expanduser(folder))
        if not os.path.isdir(path):
            raise EmptyDatasetError(f"{param}: {folder} ({path}) is not a folder")
        if not _trajectory_files(path):
            below = sorted(os.path.relpath(root, path) for root, _, files in os.walk(path) if _ends_with_traj(files))[
                :3
            ]
            where = f"; subfolders that hold some: {', '.join(below)}" if below else ""
            raise EmptyDatasetError(
                f"{param}: no trajectory files (*.npz, *.traj) in {path}{where}. Point it at the folder that "
                "holds the files (evaluate_test(save_trajs_to=DIR) and eval_split.py --save_trajs_to DIR write them)"
            )
        checked.append(path)
    return checked


def _ends_with_traj(files: list[str]) -> bool:
    return any(f.endswith(TRAJ_SUFFIXES) and not f.startswith(".") for f in files)


@gin.configurable
class TrajFolderDataset(DiskTrajDataset):
    """Every trajectory file in ``folders`` (one folder or several): a fixed dataset to train on
    offline, or to mix with a run's buffer through MixtureOfDatasets. Read-only: it takes no new
    trajectories (``save_new_trajs_to`` is None) and never deletes a file. A folder that holds no
    trajectory files is refused at once, naming it (and any subfolders that do hold some)."""

    def __init__(self, folders: str | tuple[str, ...] = (), cache_mb: float = 256.0):
        if not cache_mb >= 0:
            raise ValueError(f"TrajFolderDataset.cache_mb must be >= 0, got {cache_mb!r}")
        if not folders:
            raise EmptyDatasetError("TrajFolderDataset.folders: name at least one folder of trajectory files")
        self.demo_dirs = _check_demo_dirs("TrajFolderDataset.folders", folders)
        self.dset_root, self.dset_name = os.path.dirname(self.demo_dirs[0]), os.path.basename(self.demo_dirs[0])
        self.dset_max_size, self.dset_min_size = 0, 1
        self.has_edit_rights = False
        self.stale_tmp_age_s = float("inf")
        self.buffer_dir = ", ".join(self.demo_dirs)  # where errors say it looked
        self.fifo_dir = self.protected_dir = None
        self.cache_mb = cache_mb
        self._cache = TrajectoryCache(int(cache_mb * 2**20))
        self._layouts = {}
        self._bad_files = set()
        self._files = []
        self.refresh_files()

    @property
    def save_new_trajs_to(self) -> None:
        return None

    def _read_only_dirs(self) -> list[str]:
        return list(self.demo_dirs)

    def refresh_files(self) -> None:
        self._fifo = []
        kept = [f for d in self._read_only_dirs() for f in self._list(d)]
        self._files = [f for f in kept if f not in self._bad_files]
        listed = set(self._files)
        self._cache.retain(listed)
        self._layouts = {p: lay for p, lay in self._layouts.items() if p in listed}

    def on_end_of_collection(self) -> dict[str, float]:
        self.refresh_files()
        return {"buffer/trajectories": len(self)}

    def frames_received(self) -> None:
        return None

    def enforce_max_size(self) -> int:
        return 0

    def remove_stale_tmp_files(self) -> int:
        return 0

    def delete_from_disk(self) -> None:
        raise PermissionError(f"TrajFolderDataset never deletes its folders ({self.buffer_dir})")

    def get_description(self) -> str:
        return f"TrajFolderDataset({self.buffer_dir}: {len(self)} trajectories, read-only)"


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
        return self.relabel(self.datasets[i].sample_random_trajectory(rng))

    def sample_random_window(self, rng: np.random.Generator, seq_len: int, mode: str = "none") -> Trajectory:
        if self._relabels():  # relabel may need the whole trajectory
            return super().sample_random_window(rng, seq_len, mode)
        i = rng.choice(len(self.datasets), p=self.weights)
        return self.datasets[i].sample_random_window(rng, seq_len, mode)

    def get_description(self) -> str:
        parts = ", ".join(f"{w:.2f} x {d.get_description()}" for d, w in zip(self.datasets, self.weights))
        return f"MixtureOfDatasets({parts})"


# ---------------------------------------------------------------------------------------------
# padded sequence batches
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    obs: dict[str, torch.Tensor]  # each (B, L, *shape)
    rl2s: torch.Tensor  # (B, L, 1+A)
    time_idxs: torch.Tensor  # (B, L, 1) long
    pad_mask: torch.Tensor  # (B, L, 1) bool, True = real timestep
    actions: torch.Tensor  # (B, L-1, A)
    rews: torch.Tensor  # (B, L-1, 1)
    dones: torch.Tensor  # (B, L-1, 1) float, 1 = terminated

    def to(self, device: torch.device | str) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved["obs"] = {k: v.to(device, non_blocking=True) for k, v in self.obs.items()}
        for k in ("rl2s", "time_idxs", "pad_mask", "actions", "rews", "dones"):
            moved[k] = moved[k].to(device, non_blocking=True)
        return Batch(**moved)

    @property
    def transition_mask(self) -> torch.Tensor:
        """(B, L-1, 1) bool: transition t is real when timestep t+1 is."""
        return self.pad_mask[:, 1:]


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


def _pad(x: np.ndarray, length: int, dtype: np.dtype | type | None = None) -> np.ndarray:
    """A new (length, ...) array of ``dtype`` (default x's) holding x, then zeros."""
    out = np.zeros((length, *x.shape[1:]), dtype=dtype or x.dtype)
    out[: len(x)] = x
    return out


def window_of(traj: Trajectory, start: int, end: int, seq_len: int) -> dict:
    """Cut timesteps [start, end) and pad them on the right to seq_len (so causal attention never sees padding)."""
    return {
        "obs": {k: _pad(v[start:end], seq_len) for k, v in traj.obs.items()},
        "rl2s": _pad(traj.rl2s[start:end], seq_len, np.float32),
        "time_idxs": _pad(traj.time_idxs[start:end], seq_len, np.int64),
        "pad_mask": _pad(np.ones((end - start, 1), dtype=bool), seq_len),
        "actions": _pad(traj.actions[start : end - 1], seq_len - 1, np.float32),
        "rews": _pad(traj.rews[start : end - 1], seq_len - 1, np.float32),
        "dones": _pad(traj.dones[start : end - 1], seq_len - 1, np.float32),
    }


class SequenceSampler(torch.utils.data.Dataset):
    """Map-style view that returns a fresh random window for any index (the index is ignored)."""

    def __init__(self, dataset: RLDataset, seq_len: int, padded_sampling: str = "none", items_per_epoch: int = 1):
        if seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2 to hold a transition, got {seq_len}")
        check_choice("padded_sampling", padded_sampling, PADDED_SAMPLING)
        self.dataset, self.seq_len, self.mode, self.items = dataset, seq_len, padded_sampling, items_per_epoch
        # a fresh stream per sampler (one per epoch), reproducible under torch.manual_seed
        self._seed = int(torch.randint(0, 2**62, (1,)).item())
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return self.items

    def _generator(self) -> np.random.Generator:
        # each DataLoader worker gets its own copy of this object: give each its own stream
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self._seed, 0 if info is None else info.id + 1])
        return self._rng

    def window(self) -> Trajectory:
        """One random window, unpadded (at most seq_len timesteps)."""
        return self.dataset.sample_random_window(self._generator(), self.seq_len, self.mode)

    def __getitem__(self, _: int) -> dict:
        win = self.window()
        return window_of(win, 0, len(win), self.seq_len)

    def batch(self, size: int) -> Batch:
        """``size`` random windows, padded and collated."""
        return collate_windows([self.window() for _ in range(size)], self.seq_len)


class _Batches(torch.utils.data.Dataset):
    """Map-style view whose every item is a whole Batch drawn by ``sampler`` (the index is ignored)."""

    def __init__(self, sampler: SequenceSampler, batch_size: int, batches: int):
        self.sampler, self.batch_size, self.batches = sampler, batch_size, batches

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, _: int) -> Batch:
        return self.sampler.batch(self.batch_size)


def collate(items: list[dict]) -> Batch:
    stack = lambda k: torch.from_numpy(np.stack([it[k] for it in items]))  # noqa: E731
    return Batch(
        obs={k: torch.from_numpy(np.stack([it["obs"][k] for it in items])) for k in items[0]["obs"]},
        rl2s=stack("rl2s"),
        time_idxs=stack("time_idxs"),
        pad_mask=stack("pad_mask"),
        actions=stack("actions"),
        rews=stack("rews"),
        dones=stack("dones"),
    )


def collate_windows(windows: list[Trajectory], seq_len: int, shared: bool | None = None) -> Batch:
    """Pad unpadded windows (each at most seq_len timesteps) on the right and stack them, as
    ``collate([window_of(w, 0, len(w), seq_len) for w in windows])`` would, copying each array once.

    All tensors are views into one zeroed buffer, in shared memory when ``shared`` (default: inside a
    DataLoader worker), so sending the batch to the main process moves one segment, not one per tensor.
    """
    n, first = len(windows), windows[0]
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        **{f"obs/{k}": ((n, seq_len, *v.shape[1:]), _torch_dtype(v.dtype)) for k, v in first.obs.items()},
        "rl2s": ((n, seq_len, *first.rl2s.shape[1:]), torch.float32),
        "time_idxs": ((n, seq_len, *first.time_idxs.shape[1:]), torch.int64),
        "pad_mask": ((n, seq_len, 1), torch.bool),
        "actions": ((n, seq_len - 1, *first.actions.shape[1:]), torch.float32),
        "rews": ((n, seq_len - 1, *first.rews.shape[1:]), torch.float32),
        "dones": ((n, seq_len - 1, *first.dones.shape[1:]), torch.float32),
    }
    offsets, total = {}, 0
    for name, (shape, dtype) in specs.items():
        offsets[name] = total
        total += -(-math.prod(shape) * dtype.itemsize // 8) * 8  # keep every view 8-byte aligned
    if shared is None:
        shared = torch.utils.data.get_worker_info() is not None
    buf = torch.zeros(total, dtype=torch.uint8)
    if shared:
        buf.share_memory_()
    t = {
        name: buf[offsets[name] : offsets[name] + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
        for name, (shape, dtype) in specs.items()
    }
    a = {name: v.numpy() for name, v in t.items()}  # numpy views to fill
    obs = [(k, a[f"obs/{k}"]) for k in first.obs]
    rl2s, time_idxs, pad_mask = a["rl2s"], a["time_idxs"], a["pad_mask"]
    actions, rews, dones = a["actions"], a["rews"], a["dones"]
    for b, w in enumerate(windows):
        m = len(w.time_idxs)
        for k, out in obs:
            out[b, :m] = w.obs[k]
        rl2s[b, :m], time_idxs[b, :m], pad_mask[b, :m] = w.rl2s, w.time_idxs, True
        actions[b, : m - 1], rews[b, : m - 1], dones[b, : m - 1] = w.actions, w.rews, w.dones
    return Batch(
        obs={k: t[f"obs/{k}"] for k in first.obs},
        rl2s=t["rl2s"],
        time_idxs=t["time_idxs"],
        pad_mask=t["pad_mask"],
        actions=t["actions"],
        rews=t["rews"],
        dones=t["dones"],
    )


@functools.cache
def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _as_is(batch: Batch) -> Batch:
    return batch


def make_dataloader(
    dataset: RLDataset,
    seq_len: int,
    batch_size: int,
    batches: int,
    padded_sampling: str = "none",
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``batches`` Batch objects of random padded windows. Each worker (or the
    main process, with 0 workers) builds whole batches and draws from its own random stream."""
    sampler = SequenceSampler(dataset, seq_len, padded_sampling, items_per_epoch=batches * batch_size)
    return torch.utils.data.DataLoader(
        _Batches(sampler, batch_size, batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        persistent_workers=False,
        pin_memory=False,
    )
