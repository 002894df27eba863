"""Tests for the fast read side of amago_like.data: windows read straight from .npz files, the
per-process trajectory cache, and whole batches collated into one buffer."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amago_like.data.dataset import (
    PADDED_SAMPLING,
    DiskTrajDataset,
    MixtureOfDatasets,
    TrajectoryCache,
    collate,
    collate_windows,
    make_dataloader,
    sample_window,
    window_of,
)
from amago_like.data.trajectory import (
    FORMATS,
    Trajectory,
    TrajectoryFileError,
    load_trajectory_and_layout,
    read_window,
    save_trajectory,
)

FIELDS = ("rl2s", "time_idxs", "actions", "rews", "dones")


pytestmark = pytest.mark.usefixtures("one_thread")


def make_traj(tid: int = 0, T: int = 9, A: int = 3) -> Trajectory:
    """obs["pos"][t] = [tid, t, noise]; a uint8 image observation too."""
    rng = np.random.default_rng(tid)
    t = np.arange(T + 1)
    pos = np.stack([np.full(T + 1, tid), t, rng.normal(size=T + 1)], axis=1).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(T, A)).astype(np.float32)
    rews = rng.normal(size=(T, 1)).astype(np.float32)
    rl2s = np.zeros((T + 1, 1 + A), np.float32)
    rl2s[1:, :1], rl2s[1:, 1:] = rews, actions
    dones = np.zeros((T, 1), bool)
    dones[-1:] = True
    return Trajectory(
        obs={"pos": pos, "img": rng.integers(0, 256, size=(T + 1, 2, 3), dtype=np.uint8)},
        rl2s=rl2s,
        time_idxs=t[:, None].astype(np.int64),
        actions=actions,
        rews=rews,
        dones=dones,
    )


def assert_same(a: Trajectory, b: Trajectory) -> None:
    assert sorted(a.obs) == sorted(b.obs)
    pairs = [(f"obs[{k}]", a.obs[k], b.obs[k]) for k in a.obs] + [(f, getattr(a, f), getattr(b, f)) for f in FIELDS]
    for name, x, y in pairs:
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape, y.shape)
        np.testing.assert_array_equal(x, y, err_msg=name)


def assert_same_batch(a, b) -> None:
    assert a.obs.keys() == b.obs.keys()
    for k in a.obs:
        assert a.obs[k].dtype == b.obs[k].dtype and torch.equal(a.obs[k], b.obs[k]), k
    for f in ("rl2s", "time_idxs", "pad_mask", "actions", "rews", "dones"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f


# --------------------------------------------------------------------------- #
# read_window
# --------------------------------------------------------------------------- #


@settings(max_examples=40, deadline=None)
@given(T=st.integers(0, 40), A=st.integers(1, 4), data=st.data())
def test_read_window_equals_slicing_the_loaded_trajectory(T, A, data):
    traj = make_traj(T, T=T, A=A)
    start = data.draw(st.integers(0, T))
    end = data.draw(st.integers(start + 1, T + 1))
    with tempfile.TemporaryDirectory() as d:
        path = save_trajectory(traj, d, "env", "npz")
        loaded, layout = load_trajectory_and_layout(path)
        assert layout is not None and layout.n == T + 1
        win = read_window(path, layout, start, end)
        win.validate()
        assert_same(traj.window(start, end), win)
        assert_same(loaded.window(start, end), win)
        assert all(v.flags.writeable for v in (*win.obs.values(), win.rl2s, win.actions))
        with pytest.raises(ValueError):
            read_window(path, layout, start, T + 2)


def test_only_uncompressed_npz_files_get_a_layout(tmp_path):
    for fmt in FORMATS:
        path = save_trajectory(make_traj(1), str(tmp_path), "env", fmt)
        traj, layout = load_trajectory_and_layout(path)
        assert_same(make_traj(1), traj)
        assert (layout is not None) == (fmt == "npz"), fmt


def test_read_window_of_a_truncated_or_missing_file(tmp_path):
    path = save_trajectory(make_traj(2, T=50), str(tmp_path), "env", "npz")
    _, layout = load_trajectory_and_layout(path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(TrajectoryFileError, match="shorter") as info:
        read_window(path, layout, 40, 51)
    assert path in str(info.value)
    os.remove(path)
    with pytest.raises(FileNotFoundError):
        read_window(path, layout, 0, 5)


# --------------------------------------------------------------------------- #
# windows sampled from a DiskTrajDataset equal cuts of the whole trajectory
# --------------------------------------------------------------------------- #


def expected_windows(ds: DiskTrajDataset, trajs: dict[str, Trajectory], seed: int, draws: int, seq_len: int, mode: str):
    """Replays the random stream the dataset uses: file index (its own draw, tilted by ``recency``), then
    sample_window."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        path = ds._files[ds._random_index(rng)]
        traj = trajs[path]
        start, end = sample_window(len(traj), seq_len, mode, rng)
        out.append(traj.window(start, end))
    return out


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(PADDED_SAMPLING),
    seq_len=st.integers(2, 12),
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    fmt=st.sampled_from(FORMATS),
    cache_mb=st.sampled_from([0.0, 1e-3, 64.0]),
    seed=st.integers(0, 2**32),
)
def test_sampled_windows_equal_cuts_of_the_whole_trajectory(mode, seq_len, lengths, fmt, cache_mb, seed):
    with tempfile.TemporaryDirectory() as d:
        ds = DiskTrajDataset(d, "dset", cache_mb=cache_mb)
        trajs = {}
        for i, n in enumerate(lengths):
            trajs[save_trajectory(make_traj(i, T=n - 1), ds.fifo_dir, "env", fmt)] = make_traj(i, T=n - 1)
        ds.refresh_files()
        draws = 3 * len(lengths) + 3  # first reads (whole file), then windowed reads or cache hits
        rng = np.random.default_rng(seed)
        got = [ds.sample_random_window(rng, seq_len, mode) for _ in range(draws)]
        for g, want in zip(got, expected_windows(ds, trajs, seed, draws, seq_len, mode), strict=True):
            assert_same(want, g)
        # padded and collated: the same as padding each window of the whole trajectory
        batch = collate_windows(got, seq_len)
        assert_same_batch(collate([window_of(w, 0, len(w), seq_len) for w in got]), batch)
        assert ds._cache.nbytes <= ds._cache.max_bytes


@pytest.mark.parametrize("shared", [False, True])
def test_collate_windows_matches_collate_of_padded_windows(shared):
    seq_len = 7
    trajs = [make_traj(i, T=n) for i, n in enumerate((0, 3, 6, 20))]
    windows = [t.window(0, min(len(t), seq_len)) for t in trajs] + [trajs[-1].window(5, 9)]
    want = collate([window_of(w, 0, len(w), seq_len) for w in windows])
    got = collate_windows(windows, seq_len, shared=shared)
    assert_same_batch(want, got)
    assert got.pad_mask.sum().item() == sum(len(w) for w in windows)
    assert got.rl2s.untyped_storage().data_ptr() == got.dones.untyped_storage().data_ptr(), "one buffer"
    assert got.rl2s.is_shared() == shared


# --------------------------------------------------------------------------- #
# the cache
# --------------------------------------------------------------------------- #


def test_cache_respects_its_byte_bound_and_evicts_least_recently_used():
    trajs = {f"/x/{i}": make_traj(i, T=99) for i in range(6)}
    size = trajs["/x/0"].nbytes
    cache = TrajectoryCache(3 * size + size // 2)
    for path in ("/x/0", "/x/1", "/x/2"):
        assert cache.put(path, trajs[path])
    assert len(cache) == 3 and cache.nbytes == 3 * size
    assert cache.get("/x/0") is trajs["/x/0"]  # now the most recently used
    assert cache.put("/x/3", trajs["/x/3"])
    assert "/x/1" not in cache and "/x/0" in cache, "the least recently used goes first"
    for path in ("/x/4", "/x/5"):
        cache.put(path, trajs[path])
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 3
    assert not TrajectoryCache(size - 1).put("/x/0", make_traj(0, T=99)), "larger than the whole bound"
    cached = cache.get("/x/5")
    with pytest.raises(ValueError):  # shared by every window cut from it
        cached.rews[0] = 1.0
    cache.retain({"/x/5"})
    assert len(cache) == 1 and cache.nbytes == size
    cache.discard("/x/5")
    assert len(cache) == 0 and cache.nbytes == 0


def test_dataset_cache_stays_under_cache_mb(tmp_path):
    ds = DiskTrajDataset(str(tmp_path), "dset", cache_mb=0.05)  # ~51 KB: three of these 14 KB files
    for i in range(10):
        save_trajectory(make_traj(i, T=299), ds.fifo_dir, "env", FORMATS[i % 3])
    ds.refresh_files()
    rng = np.random.default_rng(0)
    for _ in range(200):
        win = ds.sample_random_window(rng, 16, "both")
        assert ds._cache.nbytes <= ds._cache.max_bytes
        np.testing.assert_array_equal(win.obs["pos"][:, 1], win.time_idxs[:, 0])
    assert 1 <= len(ds._cache) <= 3
    assert len(ds._layouts) == 4, "every uncompressed npz file read once keeps its layout"
    with pytest.raises(ValueError, match="cache_mb"):
        DiskTrajDataset(str(tmp_path), "dset", cache_mb=-1)


def test_sample_random_trajectory_returns_the_callers_own_arrays(tmp_path):
    ds = DiskTrajDataset(str(tmp_path), "dset")
    save_trajectory(make_traj(3), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    first = ds.sample_random_trajectory(np.random.default_rng(0))
    first.rews[:] = 123.0
    first.obs["pos"][:] = -1
    again = ds.sample_random_trajectory(np.random.default_rng(0))
    assert_same(make_traj(3), again)
    (want,) = expected_windows(ds, {ds._files[0]: make_traj(3)}, 0, 1, 5, "none")
    assert_same(want, ds.sample_random_window(np.random.default_rng(0), 5, "none"))


@pytest.mark.parametrize("cache_mb", [0.0, 64.0], ids=["window-reads", "cached"])
def test_file_deleted_after_it_was_read_is_never_sampled_again(tmp_path, cache_mb):
    ds = DiskTrajDataset(str(tmp_path), "dset", cache_mb=cache_mb)
    gone = save_trajectory(make_traj(0), ds.fifo_dir, "env", "npz")
    save_trajectory(make_traj(1), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    rng = np.random.default_rng(0)
    assert {int(ds.sample_random_window(rng, 4, "none").obs["pos"][0, 0]) for _ in range(40)} == {0, 1}
    assert (gone in ds._cache) == (cache_mb > 0) and gone in ds._layouts
    os.remove(gone)  # the FIFO bound, enforced by another process, before this one re-lists the folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(40):
            assert ds.sample_random_window(rng, 4, "none").obs["pos"][0, 0] == 1
            assert ds.sample_random_trajectory(rng).obs["pos"][0, 0] == 1
    assert gone not in ds._cache and gone not in ds._layouts and gone not in ds._files


def test_refresh_drops_cached_files_that_are_no_longer_listed(tmp_path):
    ds = DiskTrajDataset(str(tmp_path), "dset", dset_max_size=2)
    paths = [save_trajectory(make_traj(i), ds.fifo_dir, "env", "npz") for i in range(2)]
    ds.refresh_files()
    rng = np.random.default_rng(0)
    for _ in range(30):
        ds.sample_random_window(rng, 4, "none")
    assert len(ds._cache) == 2
    save_trajectory(make_traj(2), ds.fifo_dir, "env", "npz")
    assert ds.on_end_of_collection()["buffer/deleted"] == 1
    assert paths[0] not in ds._cache and paths[0] not in ds._layouts
    assert paths[1] in ds._cache


def test_npz_truncated_after_its_first_read_is_skipped_with_one_warning(tmp_path):
    """The window path meets the damage (the layout came from the intact file): skipped like any bad file."""
    ds = DiskTrajDataset(str(tmp_path), "dset", cache_mb=0)
    bad = save_trajectory(make_traj(0, T=200), ds.fifo_dir, "env", "npz")
    save_trajectory(make_traj(1, T=200), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    rng = np.random.default_rng(0)
    for _ in range(20):
        ds.sample_random_window(rng, 8, "none")
    assert bad in ds._layouts, "read once, so later windows of it are read straight from the file"
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = {int(ds.sample_random_window(rng, 8, "none").obs["pos"][0, 0]) for _ in range(60)}
        ds.refresh_files()
        ids |= {int(ds.sample_random_window(rng, 8, "none").obs["pos"][0, 0]) for _ in range(20)}
    assert ids == {1}
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and bad in messages[0], messages
    assert len(ds) == 1


def test_truncated_npz_never_read_before_is_skipped(tmp_path):
    ds = DiskTrajDataset(str(tmp_path), "dset", cache_mb=0)
    good = save_trajectory(make_traj(5, T=100), ds.fifo_dir, "env", "npz")
    raw = open(good, "rb").read()
    bad = os.path.join(ds.fifo_dir, "00000000000000000001_trunc.npz")
    with open(bad, "wb") as f:
        f.write(raw[: len(raw) - 40])
    ds.refresh_files()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rng = np.random.default_rng(1)
        assert {int(ds.sample_random_window(rng, 8, "left").obs["pos"][0, 0]) for _ in range(30)} == {5}
    assert sum(bad in str(w.message) for w in caught) == 1
    assert bad not in ds._layouts


# --------------------------------------------------------------------------- #
# relabeling sees whole trajectories
# --------------------------------------------------------------------------- #


class ReturnNormalized(DiskTrajDataset):
    """A relabel that needs the whole trajectory (and works in place): rewards / total |reward|."""

    def relabel(self, traj: Trajectory, rng: np.random.Generator) -> Trajectory:
        traj.rews /= np.abs(traj.rews).sum()
        return traj


def relabeled(traj: Trajectory, rng: np.random.Generator | None = None) -> Trajectory:
    traj = traj.copy()
    traj.rews /= np.abs(traj.rews).sum()
    return traj


def test_a_relabel_override_without_the_rng_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match=r"OldHook.relabel\(self, traj\) must take \(self, traj, rng\)"):

        class OldHook(DiskTrajDataset):
            def relabel(self, traj):
                return traj

    class KeywordRng(DiskTrajDataset):  # any signature that takes (traj, rng) is fine
        def relabel(self, traj, rng=None, *args):
            return traj


@pytest.mark.parametrize("cache_mb", [0.0, 64.0])
def test_relabel_is_applied_to_the_whole_trajectory_before_the_window_is_cut(tmp_path, cache_mb):
    ds = ReturnNormalized(str(tmp_path), "dset", cache_mb=cache_mb)
    trajs = {save_trajectory(make_traj(i, T=30), ds.fifo_dir, "env", "npz"): make_traj(i, T=30) for i in range(3)}
    ds.refresh_files()
    want = expected_windows(ds, {p: relabeled(t) for p, t in trajs.items()}, 7, 40, 6, "both")
    rng = np.random.default_rng(7)
    for w in want:  # in place relabeling never compounds through the cache
        assert_same(w, ds.sample_random_window(rng, 6, "both"))
    # a mixture that relabels gets whole trajectories from its parts, then cuts
    plain = DiskTrajDataset(str(tmp_path), "dset", cache_mb=cache_mb)
    mix = MixtureOfDatasets([plain], [1.0])
    mix.relabel = relabeled
    rng = np.random.default_rng(3)
    for _ in range(10):
        win = mix.sample_random_window(rng, 31, "none")
        assert np.isclose(np.abs(win.rews).sum(), 1.0, atol=1e-5), "the whole trajectory was relabeled"


# --------------------------------------------------------------------------- #
# processes and determinism
# --------------------------------------------------------------------------- #


def test_a_copy_sent_to_another_process_starts_with_an_empty_cache(tmp_path):
    ds = DiskTrajDataset(str(tmp_path), "dset", cache_mb=8)
    save_trajectory(make_traj(0), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    ds.sample_random_window(np.random.default_rng(0), 4, "none")
    assert len(ds._cache) == 1 and ds._layouts
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._cache) == 0 and clone._cache.max_bytes == ds._cache.max_bytes and not clone._layouts
    assert clone._files == ds._files
    assert len(ds._cache) == 1, "the original keeps its own"


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_are_reproducible_under_a_seed_and_match_the_files(tmp_path, workers):
    ds = DiskTrajDataset(str(tmp_path), "dset", cache_mb=0.01)
    trajs = {}
    for i, fmt in enumerate(FORMATS * 2):
        trajs[i] = make_traj(i, T=5 + 7 * i)
        save_trajectory(trajs[i], ds.fifo_dir, "env", fmt)
    ds.refresh_files()

    def epoch():
        torch.manual_seed(11)
        return list(make_dataloader(ds, seq_len=8, batch_size=4, batches=6, padded_sampling="both", workers=workers))

    first, second = epoch(), epoch()
    assert len(first) == 6
    for a, b in zip(first, second, strict=True):
        assert_same_batch(a, b)
    for batch in first:
        for row in range(4):
            m = int(batch.pad_mask[row, :, 0].sum())
            tid, s = int(batch.obs["pos"][row, 0, 0]), int(batch.time_idxs[row, 0, 0])
            np.testing.assert_array_equal(batch.obs["img"][row, :m].numpy(), trajs[tid].obs["img"][s : s + m])
            np.testing.assert_array_equal(batch.actions[row, : m - 1].numpy(), trajs[tid].actions[s : s + m - 1])
            assert not batch.obs["img"][row, m:].any() and not batch.actions[row, m - 1 :].any()
    assert len(ds._cache) == 0 or workers == 0, "workers fill their own caches, not the parent's"


class EveryRewardSeven:
    """An env's hindsight relabeling (picklable, as DataLoader workers need it): every reward 7 (in place), except
    for trajectories of ``refuse_tid`` (no reached task: None)."""

    def __init__(self, refuse_tid: int | None = None):
        self.refuse_tid = refuse_tid

    def __call__(self, traj: Trajectory, rng: np.random.Generator) -> Trajectory | None:
        if traj.obs["pos"][0, 0] == self.refuse_tid:
            return None
        traj.rews[:] = 7.0
        traj.rl2s[1:, 0] = 7.0
        return traj


@pytest.mark.parametrize("cache_mb", [0.0, 64.0])
def test_the_envs_hindsight_relabels_the_datasets_fraction_of_trajectories(tmp_path, cache_mb):
    trajs = [make_traj(i, T=30) for i in range(4)]
    ds = DiskTrajDataset(str(tmp_path), "dset", cache_mb=cache_mb, recency=0.0, hindsight=0.5)
    for t in trajs:
        save_trajectory(t, ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    plain = [ds.sample_random_window(np.random.default_rng(3), 6, "both") for _ in range(5)]
    ds.use_env_relabeler(EveryRewardSeven(refuse_tid=3))
    rng = np.random.default_rng(0)
    windows = [ds.sample_random_window(rng, 12, "none") for _ in range(400)]
    sevens = [bool((w.rews == 7.0).all()) for w in windows]
    assert 0.3 < np.mean(sevens) < 0.45, "half of the trajectories (3 files in 4 can be relabeled: 0.375)"
    for w, seven in zip(windows, sevens):
        tid = int(w.obs["pos"][0, 0])
        if seven:
            assert tid != 3 and (w.rl2s[1:, 0] == 7.0).all()
        else:  # the stored rewards, untouched by earlier relabeling (the cache keeps its own arrays)
            np.testing.assert_array_equal(w.rews, trajs[tid].rews[w.time_idxs[0, 0] : w.time_idxs[-1, 0]])
    # hindsight 0 (or no relabeling env) reads exactly as before: the same windows from the same random stream
    ds.hindsight = 0.0
    for want in plain:
        assert_same(want, ds.sample_random_window(np.random.default_rng(3), 6, "both"))
    # a mixture hands the env's relabeling to its parts; each relabels at its own fraction
    part = DiskTrajDataset(str(tmp_path), "dset", cache_mb=cache_mb, hindsight=1.0)
    mix = MixtureOfDatasets([part], [1.0])
    mix.use_env_relabeler(pickle.loads(pickle.dumps(EveryRewardSeven())))
    assert all((mix.sample_random_window(rng, 12, "none").rews == 7.0).all() for _ in range(20))
    with pytest.raises(ValueError, match=r"DiskTrajDataset.hindsight must be in \[0, 1\], got 1.5"):
        DiskTrajDataset(str(tmp_path), "dset", hindsight=1.5)
