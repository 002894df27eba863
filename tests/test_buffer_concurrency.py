"""The disk buffer under concurrent writers, deleters and readers, and under writers killed mid-write.

Writers run as forked OS processes (the way actors and learners share a buffer folder); the
reader samples in the test process meanwhile.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
import warnings

import numpy as np
import pytest

from amago_like.data.dataset import DiskTrajDataset
from amago_like.data.trajectory import FORMATS, Trajectory, load_trajectory, save_trajectory

CTX = mp.get_context("fork")  # fast start; the children use numpy and the file system only


def make_traj(writer: int, index: int, T: int = 30) -> Trajectory:
    """A trajectory that names itself: obs["x"][t] = [writer, index, t]."""
    t = np.arange(T + 1)
    x = np.stack([np.full(T + 1, writer), np.full(T + 1, index), t], axis=1).astype(np.float32)
    return Trajectory(
        obs={"x": x},
        rl2s=np.zeros((T + 1, 3), np.float32),
        time_idxs=t[:, None].astype(np.int64),
        actions=np.zeros((T, 2), np.float32),
        rews=np.ones((T, 1), np.float32),
        dones=np.zeros((T, 1), bool),
    )


def check_identity(traj: Trajectory) -> None:
    """A loaded trajectory is whole: its rows all carry one (writer, index) and count t = 0..T."""
    x = traj.obs["x"]
    assert (x[:, 0] == x[0, 0]).all() and (x[:, 1] == x[0, 1]).all()
    np.testing.assert_array_equal(x[:, 2], np.arange(len(x)))


def visible(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def hidden(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


# --------------------------------------------------------------------------- #
# concurrent writers + deleters + a reader
# --------------------------------------------------------------------------- #


def _writer(root: str, writer: int, n_files: int, max_size: int, start, manifest: str) -> None:
    ds = DiskTrajDataset(root, "shared", dset_max_size=max_size)
    start.wait()
    written = []
    for i in range(n_files):
        path = save_trajectory(make_traj(writer, i), ds.fifo_dir, f"writer{writer}", FORMATS[i % len(FORMATS)])
        written.append(os.path.basename(path))
        if i % 2:
            ds.on_end_of_collection()
        else:
            ds.enforce_max_size()
    with open(manifest, "w") as f:
        json.dump(written, f)


def test_two_writer_processes_and_a_reader_share_one_fifo(tmp_path):
    max_size, n_files = 8, 120
    start = CTX.Event()
    manifests = [str(tmp_path / f"written{w}.json") for w in range(2)]
    procs = [
        CTX.Process(target=_writer, args=(str(tmp_path), w, n_files, max_size, start, manifests[w])) for w in range(2)
    ]
    reader = DiskTrajDataset(str(tmp_path), "shared", dset_max_size=max_size, has_edit_rights=False)
    rng = np.random.default_rng(0)
    samples = 0
    for p in procs:
        p.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start.set()
        while any(p.is_alive() for p in procs):
            reader.refresh_files()
            if len(reader):
                for _ in range(5):  # sample from a list that ages while the writers delete
                    check_identity(reader.sample_random_trajectory(rng))
                    samples += 1
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert [str(w.message) for w in caught] == [], "the reader never met a partial or unreadable file"
    assert samples > 20, "the reader must have sampled while the writers ran"

    everything = sorted(sum((json.load(open(m)) for m in manifests), []))
    assert len(everything) == 2 * n_files
    left = visible(reader.fifo_dir)
    assert len(left) <= max_size
    assert left == everything[-max_size:], "the survivors are the newest files"
    assert hidden(reader.fifo_dir) == [], "finished writers leave no temporary files"
    for name in left:
        check_identity(load_trajectory(os.path.join(reader.fifo_dir, name)))
    reader.refresh_files()
    assert len(reader) == max_size


def test_sampler_relists_when_every_listed_file_was_deleted(tmp_path):
    ds = DiskTrajDataset(str(tmp_path), "dset", has_edit_rights=False)
    old = [save_trajectory(make_traj(0, i), ds.fifo_dir, "env", "npz") for i in range(3)]
    ds.refresh_files()
    for p in old:  # the FIFO bound (another process) turned the whole buffer over since the refresh
        os.remove(p)
    save_trajectory(make_traj(1, 7), ds.fifo_dir, "env", "npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traj = ds.sample_random_trajectory(np.random.default_rng(0))
    assert traj.obs["x"][0, :2].tolist() == [1.0, 7.0]
    assert len(ds) == 1


# --------------------------------------------------------------------------- #
# writers killed by SIGKILL
# --------------------------------------------------------------------------- #


def _stalled_writer(folder: str, fmt: str, ready) -> None:
    """Writes part of a file, tells the parent, and hangs inside save_trajectory until killed."""
    import pickle

    def stall(f, *args, **kwargs):
        f = f if hasattr(f, "write") else args[0]  # np.savez(file, ...) vs pickle.dump(obj, file)
        f.write(b"PK\x03\x04" + b"\x00" * 4096)
        f.flush()
        ready.set()
        time.sleep(60)

    np.savez = np.savez_compressed = stall
    pickle.dump = stall
    save_trajectory(make_traj(0, 0), folder, "victim", fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_killed_inside_save_leaves_only_a_hidden_temp_file(tmp_path, fmt):
    ds = DiskTrajDataset(str(tmp_path), "dset")
    ready = CTX.Event()
    p = CTX.Process(target=_stalled_writer, args=(ds.fifo_dir, fmt, ready))
    p.start()
    try:
        assert ready.wait(20), "the writer never started writing"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.join(10)
    assert p.exitcode == -signal.SIGKILL
    assert visible(ds.fifo_dir) == []
    (tmp,) = hidden(ds.fifo_dir)
    assert tmp.endswith(".tmp") and os.path.getsize(os.path.join(ds.fifo_dir, tmp)) > 0
    ds.refresh_files()
    assert len(ds) == 0 and not ds.ready_for_training
    with pytest.raises(RuntimeError, match="no readable"):
        ds.sample_random_trajectory(np.random.default_rng(0))
    save_trajectory(make_traj(1, 1), ds.fifo_dir, "alive", fmt)
    ds.refresh_files()
    assert len(ds) == 1
    check_identity(ds.sample_random_trajectory(np.random.default_rng(0)))
    ds.on_end_of_collection()
    assert hidden(ds.fifo_dir) == [tmp], "a fresh temporary file may be a live write: it stays"


def _endless_writer(folder: str, fmt: str) -> None:
    big = make_traj(3, 0, T=60_000)  # ~1.2 MB of observations, ~3 MB in all
    i = 0
    while True:
        big.obs["x"][:, 1] = i
        save_trajectory(big, folder, "big", fmt)
        i += 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_killed_at_random_moments_never_leaves_a_partial_visible_file(tmp_path, fmt):
    ds = DiskTrajDataset(str(tmp_path), "dset")
    rng = np.random.default_rng(1)
    for _ in range(3):
        p = CTX.Process(target=_endless_writer, args=(ds.fifo_dir, fmt))
        p.start()
        deadline = time.time() + 20
        while not hidden(ds.fifo_dir) and time.time() < deadline:  # wait until a write is in progress
            time.sleep(0.0005)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
    assert len(hidden(ds.fifo_dir)) <= 3, "at most one abandoned temporary file per killed writer"
    ds.refresh_files()
    assert len(ds) == len(visible(ds.fifo_dir))
    for name in visible(ds.fifo_dir):  # whatever became visible is complete
        check_identity(load_trajectory(os.path.join(ds.fifo_dir, name)))


# --------------------------------------------------------------------------- #
# stale temporary files
# --------------------------------------------------------------------------- #


def _touch(path: str, age_s: float) -> None:
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04half a file")
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_stale_temp_files_are_removed_only_with_edit_rights(tmp_path):
    ds = DiskTrajDataset(str(tmp_path), "dset", dset_max_size=5)
    stale = os.path.join(ds.fifo_dir, ".00000000000000000001_env_dead.npz.tmp")
    fresh = os.path.join(ds.fifo_dir, ".00000000000000000002_env_live.npz.tmp")
    protected_tmp = os.path.join(ds.protected_dir, ".00000000000000000003_env_old.traj.tmp")
    _touch(stale, 2 * 3600)
    _touch(fresh, 60)
    _touch(protected_tmp, 2 * 3600)
    good = save_trajectory(make_traj(0, 0), ds.fifo_dir, "env", "npz")

    reader = DiskTrajDataset(str(tmp_path), "dset", dset_max_size=5, has_edit_rights=False)
    assert reader.on_end_of_collection() == {"buffer/trajectories": 1, "buffer/deleted": 0}
    assert os.path.exists(stale), "a process without edit rights deletes nothing"

    assert ds.on_end_of_collection() == {"buffer/trajectories": 1, "buffer/deleted": 0}
    assert not os.path.exists(stale)
    assert os.path.exists(fresh) and os.path.exists(good) and os.path.exists(protected_tmp)
    assert DiskTrajDataset(str(tmp_path), "dset", stale_tmp_age_s=30).remove_stale_tmp_files() == 1
    assert not os.path.exists(fresh) and os.path.exists(good)
