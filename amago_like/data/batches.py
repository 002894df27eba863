"""Padded sequence batches: windows of trajectories padded to ``max_seq_len``, collated into a :class:`Batch`,
and the DataLoader that draws them from a dataset."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from amago_like.checks import check_choice
from amago_like.data.dataset import PADDED_SAMPLING, RLDataset
from amago_like.data.trajectory import Trajectory


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
