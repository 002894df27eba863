"""How fast the disk buffer feeds the learner: sampled batches/s through ``make_dataloader``.

Writes a temporary buffer per file format with Meta-World-shaped trajectories (obs (T+1, 40)
float32, 4-dim actions, T = 1500 = 3 attempts x 500 steps), then times ``make_dataloader`` (batch
24 x seq_len 256, ``padded_sampling="none"``) for each format, ``DiskTrajDataset.cache_mb`` and
worker count, each with a fresh dataset (so every file's first, whole read in each process is
timed too). Files sit in the page cache after writing, so this measures the read + unpack +
window + collate (+ worker transfer) path, not the disk. ``--baseline`` adds the loader as it was
before windowed reads and the cache ("before": every window loads its whole file, padded and
stacked per window).

    python benchmarks/data_loader.py                      # 200 files/format, cache 0/256 MB, 0/2/6 workers
    python benchmarks/data_loader.py --files 50 --batches 100 --formats npz --workers 0 --cache-mb 0
    python benchmarks/data_loader.py --profile npz:0:0    # cProfile one configuration (FMT:WORKERS:CACHE_MB)
    python benchmarks/data_loader.py --formats npz,traj --baseline --repeats 3

Measured on 2 shared CPU cores (OMP_NUM_THREADS=1, load average 4-5 from other jobs; best of 3
except npz-compressed, 1 run), 200 files/format, batches/s:

| format | loader | cache MB | 0 workers | 2 workers | 6 workers |
|---|---|---|---|---|---|
| npz | before | 0 | 182 | 141 | 133 |
| npz | now | 0 (windowed reads) | 781 | 235 | 289 |
| npz | now | 256 | 1168 | 360 | 281 |
| npz-compressed | before | 0 | 16 | 15 | 15 |
| npz-compressed | now | 0 | 14 | 14 | 20 |
| npz-compressed | now | 256 | 438 | 134 | 76 |
| traj | before | 0 | 367 | 139 | 144 |
| traj | now | 0 | 298 | 267 | 223 |
| traj | now | 256 | 1380 | 365 | 273 |

With 0 workers the 1000 batches/s target is met when the files fit the cache (~0.8 ms/batch:
~20 us of Python per window, ~0.2 ms to collate); windowed .npz reads add ~20 us per window (open,
6 preadv, close). With workers, every batch (1.3 MB) crosses to the main process through shared
memory, which alone caps a DataLoader that does no work at ~250-450 batches/s on this box, and 2
cores cannot run more than one worker usefully; the worker rows need a machine with spare cores.

On a shared machine the rates are noisy: ``--repeats`` keeps the best of several runs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time
import warnings

import numpy as np
import torch

from amago_like.data.dataset import (
    DiskTrajDataset,
    SequenceSampler,
    collate,
    make_dataloader,
    sample_window,
    window_of,
)
from amago_like.data.trajectory import FORMATS, Trajectory, save_trajectory


def metaworld_like(rng: np.random.Generator, T: int, obs_dim: int, action_dim: int) -> Trajectory:
    """A trajectory shaped like a k=3 Meta-World meta-episode (smooth observations, random actions)."""
    obs = np.cumsum(rng.normal(0.0, 0.01, (T + 1, obs_dim)), axis=0).astype(np.float32)
    actions = rng.uniform(-1, 1, (T, action_dim)).astype(np.float32)
    rews = rng.uniform(0, 10, (T, 1)).astype(np.float32)
    rl2s = np.zeros((T + 1, 1 + action_dim), np.float32)
    rl2s[1:, :1], rl2s[1:, 1:] = rews, actions
    dones = np.zeros((T, 1), bool)
    dones[-1] = True
    return Trajectory(
        obs={"observation": obs},
        rl2s=rl2s,
        time_idxs=np.arange(T + 1, dtype=np.int64)[:, None],
        actions=actions,
        rews=rews,
        dones=dones,
    )


def fill(root: str, fmt: str, files: int, T: int, obs_dim: int, action_dim: int) -> str:
    """Write ``files`` trajectories into a fresh buffer named ``fmt``; returns its fifo folder."""
    ds = DiskTrajDataset(root, fmt, dset_max_size=files, cache_mb=0)
    rng = np.random.default_rng(0)
    for _ in range(files):
        save_trajectory(metaworld_like(rng, T, obs_dim, action_dim), ds.fifo_dir, "metaworld-like", fmt)
    return ds.fifo_dir


class WholeFileSampler(SequenceSampler):
    """The sampler as it was before windowed reads and the cache: every window loads its whole file
    (with a ``cache_mb=0`` dataset), then is padded on its own."""

    def __getitem__(self, _: int) -> dict:
        rng = self._generator()
        traj = self.dataset.sample_random_trajectory(rng)
        start, end = sample_window(len(traj), self.seq_len, self.mode, rng)
        return window_of(traj, start, end, self.seq_len)


def old_dataloader(ds: DiskTrajDataset, seq_len: int, batch_size: int, batches: int, workers: int):
    """The loader as it was: the DataLoader fetches one padded window at a time and stacks them with ``collate``."""
    sampler = WholeFileSampler(ds, seq_len, "none", items_per_epoch=batches * batch_size)
    return torch.utils.data.DataLoader(sampler, batch_size=batch_size, num_workers=workers, collate_fn=collate)


def folder_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)) / 2**20


def time_loader(
    root: str,
    fmt: str,
    cache_mb: float,
    batches: int,
    workers: int,
    batch_size: int,
    seq_len: int,
    repeats: int = 1,
    old: bool = False,
) -> tuple[float, float]:
    """(seconds to the first batch, steady seconds per batch over the rest), best of ``repeats``, each
    with a fresh dataset (empty cache: every file's first read in each process is timed too)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        ds = DiskTrajDataset(root, fmt, dset_max_size=10**9, cache_mb=cache_mb, has_edit_rights=False)
        t0 = time.perf_counter()
        if old:
            loader = old_dataloader(ds, seq_len, batch_size, batches, workers)
        else:
            loader = make_dataloader(ds, seq_len, batch_size, batches, "none", workers)
        it = iter(loader)
        next(it)
        t1 = time.perf_counter()
        n = sum(1 for _ in it)
        t2 = time.perf_counter()
        best = (min(best[0], t1 - t0), min(best[1], (t2 - t1) / max(n, 1)))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=200, help="trajectory files per format")
    p.add_argument("--batches", type=int, default=200, help="batches timed per configuration")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {FORMATS}")
    p.add_argument("--workers", default="0,2,6", help="comma-separated DataLoader worker counts")
    p.add_argument("--T", type=int, default=1500, help="transitions per trajectory")
    p.add_argument("--obs-dim", type=int, default=40)
    p.add_argument("--action-dim", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--root", default=None, help="where to write the buffers (default: a temporary folder)")
    p.add_argument("--repeats", type=int, default=1, help="time each configuration this often, keep the best")
    p.add_argument("--cache-mb", default="0,256", help="comma-separated DiskTrajDataset.cache_mb values")
    p.add_argument("--baseline", action="store_true", help="also time the loader as it was before (see old_dataloader)")
    p.add_argument("--profile", default=None, metavar="FMT:WORKERS[:CACHE_MB]", help="also cProfile this configuration")
    args = p.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    workers = [int(w) for w in args.workers.split(",") if w]
    caches = [float(c) for c in args.cache_mb.split(",") if c]
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)

    root = args.root or tempfile.mkdtemp(prefix="amago_like_bench_")
    try:
        print(
            f"{args.files} files/format, T={args.T}, obs ({args.T + 1}, {args.obs_dim}) float32, {os.cpu_count()} CPUs"
        )
        print("| format | MB on disk | KB/file | write ms/file |")
        print("|---|---|---|---|")
        for fmt in formats:
            t0 = time.perf_counter()
            folder = fill(root, fmt, args.files, args.T, args.obs_dim, args.action_dim)
            ms = (time.perf_counter() - t0) / args.files * 1e3
            mb = folder_mb(folder)
            print(f"| {fmt} | {mb:.1f} | {mb * 1024 / args.files:.0f} | {ms:.1f} |")

        steps = args.batch_size * args.seq_len
        print(f"\nbatch {args.batch_size} x seq_len {args.seq_len}, {args.batches} batches per configuration")
        print("| format | loader | cache MB | workers | batches/s | timesteps/s | ms/batch | first batch s |")
        print("|---|---|---|---|---|---|---|---|")
        runs = [(fmt, c, False) for fmt in formats for c in caches]
        if args.baseline:
            runs = [(fmt, 0.0, True) for fmt in formats] + runs
        for fmt, cache, old in runs:
            for w in workers:
                first, per = time_loader(
                    root, fmt, cache, args.batches, w, args.batch_size, args.seq_len, args.repeats, old
                )
                label = "before" if old else "now"
                print(
                    f"| {fmt} | {label} | {cache:g} | {w} | {1 / per:.1f} | {steps / per:,.0f} | {per * 1e3:.2f} "
                    f"| {first:.2f} |"
                )

        if args.profile:
            fmt, w, *c = args.profile.split(":")
            cache = float(c[0]) if c else 256.0
            if fmt not in formats:
                fill(root, fmt, args.files, args.T, args.obs_dim, args.action_dim)
            prof = cProfile.Profile()
            prof.enable()
            time_loader(root, fmt, cache, args.batches, int(w), args.batch_size, args.seq_len)
            prof.disable()
            print(f"\ncProfile of {fmt} with {w} workers, cache {cache:g} MB (top 20 by total time)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
