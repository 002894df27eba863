"""Trajectory files on disk: the FIFO-bounded replay buffer (:class:`DiskTrajDataset`), read-only folders of
trajectory files (:class:`TrajFolderDataset`) and the per-process cache of loaded trajectories."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import gin
import numpy as np

from amago_like.checks import check_int, check_number, check_unit_interval, storage_error
from amago_like.data.dataset import EmptyDatasetError, RLDataset, sample_window
from amago_like.data.trajectory import (
    NpzLayout,
    Trajectory,
    TrajectoryFileError,
    count_transitions,
    load_trajectory_and_layout,
    read_window,
)

_REFRESHES_WHEN_DRY = 3  # times a sampler re-lists the folders before it reports an empty dataset
HINDSIGHT = 0.65  # the default fraction of sampled trajectories relabeled, one value for both datasets below
CACHE_MB = 256.0  # the default size of the decoded-trajectory cache, the same for both datasets below
_T = TypeVar("_T")


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
    ``Experiment.evaluate_test(..., save_trajs_to=DIR)`` or
    ``python -m amago_like.evaluate RUN --save_trajs_to DIR``), sampled along with the buffer like ``protected/``:
    never written, never deleted. Each must hold trajectory files. To train on such a folder alone (offline), use
    :class:`TrajFolderDataset`.

    Reading: each process (every DataLoader worker included) keeps its own LRU cache of loaded
    trajectories of at most ``cache_mb`` MB (0 turns it off); a cached file that has since been
    deleted is never sampled again. The first read of a file in a process loads (and checks) it
    whole; after that, windows of an uncompressed ``.npz`` file that is not cached are read
    straight from the file, only the rows they need. Windows are only cut before relabeling
    when ``relabel`` is the identity; otherwise the whole trajectory is relabeled, then cut.

    ``recency`` (>= 0; 1 by default, 0 is uniform) tilts sampling towards newer ``fifo/`` files, so that data from a
    better policy is replayed more often: the newest file's weight is ``1 + recency`` against a mean of 1 (the weight
    of every ``protected/`` and demonstration file). Up to 1 the weights rise linearly with age rank from ``1 -
    recency`` for the oldest; past 1 they rise as ``(1 + recency) * rank**recency`` (rank in (0, 1], newest 1).

    ``hindsight`` (in [0, 1]; 0.65 by default) is the fraction of sampled trajectories relabeled by the training
    env's ``hindsight_relabeler()`` where it has one (:meth:`RLDataset.use_env_relabeler`); 0 turns it off.
    """

    def __init__(
        self,
        dset_root: str,
        dset_name: str,
        dset_max_size: int = 15_000,
        dset_min_size: int = 1,
        has_edit_rights: bool = True,
        stale_tmp_age_s: float = 3600.0,
        cache_mb: float = CACHE_MB,
        demo_dirs: tuple[str, ...] = (),
        recency: float = 1.0,
        hindsight: float = HINDSIGHT,
    ):
        self._set_up_reading("DiskTrajDataset", cache_mb, hindsight)
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
        self.recency = check_number("DiskTrajDataset.recency", recency, minimum=0)
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
        self._files: list[str] = []
        self._counted: set[str] = set()  # fifo files already in frames_received()
        self._received = 0
        self.refresh_files()

    def _set_up_reading(self, owner: str, cache_mb: float, hindsight: float) -> None:
        """What both datasets check and hold before they list a file: the relabeled fraction and the cache of
        decoded trajectories (``owner`` names the class in an error)."""
        check_number(f"{owner}.cache_mb", cache_mb, minimum=0)
        self.hindsight = check_unit_interval(f"{owner}.hindsight", hindsight)
        self.cache_mb = cache_mb
        self._cache = TrajectoryCache(int(cache_mb * 2**20))
        self._layouts: dict[str, NpzLayout] = {}  # where the rows lie in files already read once
        self._bad_files: set[str] = set()

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
        self._fifo = [f for f in self._list(self.fifo_dir) if f not in self._bad_files]
        kept = [f for d in self._read_only_dirs() for f in self._list(d)]
        self._files = self._fifo + [f for f in kept if f not in self._bad_files]
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
        return self._sample(rng, lambda path: self._read_whole(path, rng))

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
                path = self._files[self._random_index(rng)]
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

    def _random_index(self, rng: np.random.Generator) -> int:
        """An index into ``_files`` (``fifo/`` by age, then the read-only files), uniform unless ``recency``."""
        n, n_fifo = len(self._files), len(self._fifo)
        index = int(rng.integers(n))
        if self.recency and index < n_fifo and rng.random() < self.recency:
            # redraw (with probability min(recency, 1)) from density (1 + p) x^p over the age rank x in (0, 1],
            # p = max(recency, 1): the weights of the class docstring
            power = max(self.recency, 1.0)
            index = min(int(n_fifo * rng.random() ** (1 / (1 + power))), n_fifo - 1)
        return index

    def _forget(self, path: str) -> None:
        self._files.remove(path)
        if path in self._fifo:
            self._fifo.remove(path)
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

    def _read_whole(self, path: str, rng: np.random.Generator) -> Trajectory:
        traj, shared = self._load(path)
        return self.relabel(traj.copy() if shared else traj, rng)

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
        sizes = f"{len(self)} trajectories, max {self.dset_max_size}{demos}{self._hindsight_note()}"
        return f"DiskTrajDataset({self.buffer_dir}: {sizes})"


TRAJ_SUFFIXES = (".npz", ".traj")


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
                f"{param}: no trajectory files (*.npz, *.traj) in {path}{where}. Point it at the folder that holds the "
                "files (evaluate_test(save_trajs_to=DIR) and python -m amago_like.evaluate RUN --save_trajs_to DIR "
                "write them)"
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
    trajectory files is refused at once, naming it (and any subfolders that do hold some). ``hindsight``: as
    :class:`DiskTrajDataset`'s."""

    def __init__(self, folders: str | tuple[str, ...] = (), cache_mb: float = CACHE_MB, hindsight: float = HINDSIGHT):
        self._set_up_reading("TrajFolderDataset", cache_mb, hindsight)
        if not folders:
            raise EmptyDatasetError("TrajFolderDataset.folders: name at least one folder of trajectory files")
        self.demo_dirs = _check_demo_dirs("TrajFolderDataset.folders", folders)
        self.dset_root, self.dset_name = os.path.dirname(self.demo_dirs[0]), os.path.basename(self.demo_dirs[0])
        self.dset_max_size, self.dset_min_size = 0, 1
        self.has_edit_rights = False
        self.stale_tmp_age_s = float("inf")
        self.buffer_dir = ", ".join(self.demo_dirs)  # where errors say it looked
        self.fifo_dir = self.protected_dir = None
        self.recency = 0.0  # no fifo/ to tilt towards: every file is read-only
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
        return f"TrajFolderDataset({self.buffer_dir}: {len(self)} trajectories, read-only{self._hindsight_note()})"
