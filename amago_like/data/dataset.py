"""Disk-backed trajectory datasets and the padded sequence batches the learner trains on."""

from __future__ import annotations

import abc
import os
import shutil
import time
import warnings
from dataclasses import dataclass, fields

import gin
import numpy as np
import torch

from amago_like.checks import check_int, check_number, storage_error
from amago_like.data.trajectory import Trajectory, TrajectoryFileError, load_trajectory

PADDED_SAMPLING = ("none", "left", "right", "both")
_REFRESHES_WHEN_DRY = 3  # times a sampler re-lists the folders before it reports an empty dataset


class RLDataset(abc.ABC):
    """Where trajectories come from (for the learner) and go to (for the actors)."""

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

    def get_description(self) -> str:
        return type(self).__name__

    def relabel(self, traj: Trajectory) -> Trajectory:
        """Hook applied to every sampled trajectory (identity here)."""
        return traj


@gin.configurable
class DiskTrajDataset(RLDataset):
    """Trajectory files under ``{dset_root}/{dset_name}/buffer/{fifo,protected}``.

    ``fifo/`` holds at most ``dset_max_size`` files (oldest deleted first, by processes with
    edit rights); ``protected/`` is never deleted. Unreadable files are skipped with one
    warning each and never count as data. Hidden ``.*.tmp`` files (writes in progress, or left
    by a killed writer) are never listed; those older than ``stale_tmp_age_s`` are removed
    from ``fifo/`` when the size bound is enforced.
    """

    def __init__(
        self,
        dset_root: str,
        dset_name: str,
        dset_max_size: int = 15_000,
        dset_min_size: int = 1,
        has_edit_rights: bool = True,
        stale_tmp_age_s: float = 3600.0,
    ):
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
        self._bad_files: set[str] = set()
        self._files: list[str] = []
        self.refresh_files()

    @property
    def save_new_trajs_to(self) -> str:
        return self.fifo_dir

    @staticmethod
    def _list(folder: str) -> list[str]:
        names = sorted(n for n in os.listdir(folder) if n.endswith((".npz", ".traj")) and not n.startswith("."))
        return [os.path.join(folder, n) for n in names]

    def refresh_files(self) -> None:
        """Re-read the file lists from disk (new files from actors, deletions by others)."""
        self._fifo = self._list(self.fifo_dir)
        self._files = [f for f in self._fifo + self._list(self.protected_dir) if f not in self._bad_files]

    def __len__(self) -> int:
        return len(self._files)

    @property
    def ready_for_training(self) -> bool:
        return len(self) >= max(self.dset_min_size, 1)

    def on_end_of_collection(self) -> dict[str, float]:
        deleted = self.enforce_max_size() if self.has_edit_rights else 0
        self.refresh_files()
        return {"buffer/trajectories": len(self), "buffer/deleted": deleted}

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
        for attempt in range(_REFRESHES_WHEN_DRY + 1):
            if attempt:  # every listed file vanished (the FIFO bound turned over): look at the disk again
                self.refresh_files()
            while self._files:
                path = self._files[rng.integers(len(self._files))]
                try:
                    return self.relabel(load_trajectory(path))
                except FileNotFoundError:
                    self._files.remove(path)  # deleted by the FIFO bound since the last refresh
                except TrajectoryFileError as e:
                    if path not in self._bad_files:
                        warnings.warn(f"skipping unreadable trajectory file: {e}", stacklevel=2)
                    self._bad_files.add(path)
                    self._files.remove(path)
        raise RuntimeError(f"no readable trajectories in {self.buffer_dir}")

    def delete_from_disk(self) -> None:
        if not self.has_edit_rights:
            raise PermissionError(f"this process has no edit rights on {self.buffer_dir}")
        shutil.rmtree(os.path.join(self.dset_root, self.dset_name), ignore_errors=True)
        self._files = []

    def get_description(self) -> str:
        return f"DiskTrajDataset({self.buffer_dir}: {len(self)} trajectories, max {self.dset_max_size})"


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

    def on_end_of_collection(self) -> dict[str, float]:
        metrics = {}
        for i, d in enumerate(self.datasets):
            metrics.update({f"{k}/{i}": v for k, v in d.on_end_of_collection().items()})
        return metrics

    def sample_random_trajectory(self, rng: np.random.Generator) -> Trajectory:
        i = rng.choice(len(self.datasets), p=self.weights)
        return self.relabel(self.datasets[i].sample_random_trajectory(rng))

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
        if padded_sampling not in PADDED_SAMPLING:
            raise ValueError(f"unknown padded_sampling {padded_sampling!r}; choose one of {PADDED_SAMPLING}")
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

    def __getitem__(self, _: int) -> dict:
        rng = self._generator()
        traj = self.dataset.sample_random_trajectory(rng)
        start, end = sample_window(len(traj), self.seq_len, self.mode, rng)
        return window_of(traj, start, end, self.seq_len)


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


def make_dataloader(
    dataset: RLDataset,
    seq_len: int,
    batch_size: int,
    batches: int,
    padded_sampling: str = "none",
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``batches`` Batch objects of random padded windows."""
    sampler = SequenceSampler(dataset, seq_len, padded_sampling, items_per_epoch=batches * batch_size)
    return torch.utils.data.DataLoader(
        sampler,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
        pin_memory=False,
    )
