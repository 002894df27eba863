"""How fast the disk buffer feeds the learner: sampled batches/s through ``make_dataloader``.

Fills a temporary ``DiskTrajDataset`` per file format with Meta-World-shaped trajectories
(obs (T+1, 40) float32, 4-dim actions, T = 1500 = 3 attempts x 500 steps), then times
``make_dataloader`` (batch 24 x seq_len 256, ``padded_sampling="none"``) for each format and
worker count. Files sit in the page cache after writing, so this measures the read + unpack +
window + collate path, not the disk.

    python benchmarks/data_loader.py                      # 200 files/format, 0/2/6 workers
    python benchmarks/data_loader.py --files 50 --batches 100 --formats npz --workers 0
    python benchmarks/data_loader.py --profile npz:0      # cProfile one configuration
    python benchmarks/data_loader.py --formats npz --workers 0 --baseline   # fast npz reader vs numpy's

On a shared machine the rates are noisy: ``--repeats`` keeps the best of several runs.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import shutil
import tempfile
import time
import warnings
from unittest import mock

import numpy as np
import torch

from amago_like.data import trajectory as trajectory_module
from amago_like.data.dataset import DiskTrajDataset, make_dataloader
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


def fill(root: str, fmt: str, files: int, T: int, obs_dim: int, action_dim: int) -> DiskTrajDataset:
    ds = DiskTrajDataset(root, fmt, dset_max_size=files)
    rng = np.random.default_rng(0)
    for _ in range(files):
        save_trajectory(metaworld_like(rng, T, obs_dim, action_dim), ds.fifo_dir, "metaworld-like", fmt)
    ds.refresh_files()
    return ds


def folder_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)) / 2**20


def time_loader(
    ds: DiskTrajDataset, batches: int, workers: int, batch_size: int, seq_len: int, repeats: int = 1
) -> tuple[float, float]:
    """(seconds to the first batch, steady seconds per batch over the rest) of fresh loaders, best of ``repeats``."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0 = time.perf_counter()
        it = iter(make_dataloader(ds, seq_len, batch_size, batches, "none", workers))
        next(it)
        t1 = time.perf_counter()
        n = sum(1 for _ in it)
        t2 = time.perf_counter()
        best = (min(best[0], t1 - t0), min(best[1], (t2 - t1) / max(n, 1)))
    return best


def numpy_npz_reader():
    """Context in which .npz files are read by numpy's own zip reader (the path before the fast reader)."""
    return mock.patch.object(trajectory_module, "_read_stored_npz", lambda f: None)


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
    p.add_argument("--baseline", action="store_true", help="also time npz through numpy's zip reader")
    p.add_argument("--profile", default=None, metavar="FMT:WORKERS", help="also cProfile this configuration")
    args = p.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    workers = [int(w) for w in args.workers.split(",") if w]
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)

    root = args.root or tempfile.mkdtemp(prefix="amago_like_bench_")
    try:
        datasets = {}
        print(
            f"{args.files} files/format, T={args.T}, obs ({args.T + 1}, {args.obs_dim}) float32, {os.cpu_count()} CPUs"
        )
        print("| format | MB on disk | KB/file | write ms/file |")
        print("|---|---|---|---|")
        for fmt in formats:
            t0 = time.perf_counter()
            datasets[fmt] = fill(root, fmt, args.files, args.T, args.obs_dim, args.action_dim)
            ms = (time.perf_counter() - t0) / args.files * 1e3
            mb = folder_mb(datasets[fmt].fifo_dir)
            print(f"| {fmt} | {mb:.1f} | {mb * 1024 / args.files:.0f} | {ms:.1f} |")

        steps = args.batch_size * args.seq_len
        print(f"\nbatch {args.batch_size} x seq_len {args.seq_len}, {args.batches} batches per configuration")
        print("| format | workers | batches/s | timesteps/s | ms/batch | first batch s |")
        print("|---|---|---|---|---|---|")
        runs = [(fmt, fmt, None) for fmt in formats]
        if args.baseline and "npz" in datasets:
            runs.insert(formats.index("npz"), ("npz", "npz (numpy reader)", numpy_npz_reader))
        for fmt, label, context in runs:
            for w in workers:
                with context() if context else contextlib.nullcontext():
                    first, per = time_loader(
                        datasets[fmt], args.batches, w, args.batch_size, args.seq_len, args.repeats
                    )
                print(f"| {label} | {w} | {1 / per:.1f} | {steps / per:,.0f} | {per * 1e3:.2f} | {first:.2f} |")

        if args.profile:
            fmt, w = args.profile.split(":")
            ds = datasets.get(fmt) or fill(root, fmt, args.files, args.T, args.obs_dim, args.action_dim)
            prof = cProfile.Profile()
            prof.enable()
            time_loader(ds, args.batches, int(w), args.batch_size, args.seq_len)
            prof.disable()
            print(f"\ncProfile of {fmt} with {w} workers (top 20 by total time)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
