"""Tests for amago_like.data: trajectory files, disk datasets and padded sequence batches.

Everything is tiny and CPU-only; the DataLoader test with two workers is the slowest part.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import warnings
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from amago_like.data import trajectory as trajectory_module
from amago_like.data.dataset import (
    PADDED_SAMPLING,
    Batch,
    DiskTrajDataset,
    MixtureOfDatasets,
    RLDataset,
    SequenceSampler,
    make_dataloader,
    sample_window,
)
from amago_like.data.trajectory import (
    FORMATS,
    Trajectory,
    TrajectoryFileError,
    count_transitions,
    load_trajectory,
    save_trajectory,
)

ARRAY_FIELDS = ("rl2s", "time_idxs", "actions", "rews", "dones")
SUFFIX = {"npz": ".npz", "npz-compressed": ".npz", "traj": ".traj"}


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def make_traj(tid: int = 0, T: int = 9, A: int = 3, discrete: bool = False, terminated: bool = True, seed=None):
    """A self-consistent trajectory whose contents identify it: obs["pos"][t] = [tid, t, ...]."""
    rng = np.random.default_rng(seed if seed is not None else tid)
    t = np.arange(T + 1)
    pos = np.stack([np.full(T + 1, tid), t, rng.normal(size=T + 1)], axis=1).astype(np.float32)
    img = rng.integers(1, 256, size=(T + 1, 2, 3), dtype=np.uint8)
    if discrete:
        actions = np.eye(A, dtype=np.float32)[rng.integers(A, size=T)]
    else:
        actions = rng.uniform(-1, 1, size=(T, A)).astype(np.float32)
    rews = rng.normal(size=(T, 1)).astype(np.float32)
    dones = np.zeros((T, 1), dtype=bool)
    if terminated and T:
        dones[-1] = True
    rl2s = np.zeros((T + 1, 1 + A), dtype=np.float32)
    rl2s[1:, :1], rl2s[1:, 1:] = rews, actions
    return Trajectory(
        obs={"pos": pos, "img": img},
        rl2s=rl2s,
        time_idxs=t.astype(np.int64)[:, None],
        actions=actions,
        rews=rews,
        dones=dones,
    )


def assert_same_traj(a: Trajectory, b: Trajectory) -> None:
    assert sorted(a.obs) == sorted(b.obs)
    pairs = [(f"obs[{k}]", a.obs[k], b.obs[k]) for k in a.obs]
    pairs += [(f, getattr(a, f), getattr(b, f)) for f in ARRAY_FIELDS]
    for name, x, y in pairs:
        assert isinstance(y, np.ndarray), name
        assert x.dtype == y.dtype, f"{name}: dtype {x.dtype} != {y.dtype}"
        assert x.shape == y.shape, f"{name}: shape {x.shape} != {y.shape}"
        np.testing.assert_array_equal(x, y, err_msg=name)


def visible_files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith((".npz", ".traj")) and not n.startswith("."))


def make_dataset(tmp_path, **kw) -> DiskTrajDataset:
    return DiskTrajDataset(str(tmp_path), "dset", **kw)


def write_bad_files(folder) -> dict[str, str]:
    """A truncated npz, a random-bytes npz and a pickle of the wrong thing, keyed by kind."""
    good = save_trajectory(make_traj(99), str(folder), "donor", "npz")
    raw = open(good, "rb").read()
    os.remove(good)
    paths = {
        "truncated": os.path.join(folder, "00000000000000000001_trunc.npz"),
        "random": os.path.join(folder, "00000000000000000002_random.npz"),
        "wrong_pickle": os.path.join(folder, "00000000000000000003_wrong.traj"),
    }
    with open(paths["truncated"], "wb") as f:
        f.write(raw[: len(raw) // 2])
    with open(paths["random"], "wb") as f:
        f.write(np.random.default_rng(5).bytes(300))
    with open(paths["wrong_pickle"], "wb") as f:
        pickle.dump({"obs": [1, 2, 3], "actions": "nope"}, f)
    return paths


# --------------------------------------------------------------------------- #
# file formats
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("discrete", [False, True], ids=["box", "onehot"])
def test_round_trip_identical_arrays_and_dtypes(tmp_path, fmt, discrete):
    traj = make_traj(3, T=11, A=4, discrete=discrete)
    path = save_trajectory(traj, str(tmp_path), "my env/1", fmt)
    assert path.endswith(SUFFIX[fmt])
    assert os.path.dirname(path) == str(tmp_path)
    assert os.listdir(tmp_path) == [os.path.basename(path)], "exactly one file, no temporary left behind"
    loaded = load_trajectory(path)
    loaded.validate()
    assert len(loaded) == 12
    assert_same_traj(traj, loaded)
    if discrete:
        assert set(np.unique(loaded.actions)) <= {0.0, 1.0}
        np.testing.assert_array_equal(loaded.actions.sum(1), 1.0)


def test_file_names_sort_by_age_and_are_unique(tmp_path):
    paths = [save_trajectory(make_traj(i, T=2), str(tmp_path), "env", "npz") for i in range(6)]
    names = [os.path.basename(p) for p in paths]
    assert names == sorted(names)
    assert len(set(names)) == 6
    with pytest.raises(ValueError, match="format"):
        save_trajectory(make_traj(), str(tmp_path), "env", "hdf5")


@pytest.mark.parametrize("fmt", FORMATS)
def test_crash_while_writing_leaves_nothing_visible(tmp_path, monkeypatch, fmt):
    ds = make_dataset(tmp_path)
    folder = ds.save_new_trajs_to

    class Crash(Exception):
        pass

    def half_then_crash(*args, **kwargs):
        f = args[1] if fmt == "traj" else args[0]  # pickle.dump(obj, file) vs np.savez(file, ...)
        f.write(b"PK\x03\x04 partial bytes of a trajectory" * 10)
        f.flush()
        assert any(n.endswith(".tmp") for n in os.listdir(folder)), "writer should be writing a temp file"
        raise Crash("disk on fire")

    target = {"npz": (np, "savez"), "npz-compressed": (np, "savez_compressed"), "traj": (pickle, "dump")}[fmt]
    monkeypatch.setattr(*target, half_then_crash)
    with pytest.raises(Crash):
        save_trajectory(make_traj(), folder, "env", fmt)
    assert os.listdir(folder) == [], "the temporary file must be removed"
    ds.refresh_files()
    assert len(ds) == 0 and not ds.ready_for_training
    with pytest.raises(RuntimeError):
        ds.sample_random_trajectory(np.random.default_rng(0))


def test_keyboard_interrupt_while_writing_cleans_up(tmp_path, monkeypatch):
    def interrupted(f, *args, **kwargs):
        f.write(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_trajectory(make_traj(), str(tmp_path), "env", "npz")
    assert os.listdir(tmp_path) == []


def test_leftover_temp_file_of_a_killed_writer_is_invisible(tmp_path):
    """A writer killed by SIGKILL cannot clean up; its temp file must still never be listed."""
    ds = make_dataset(tmp_path)
    name = trajectory_module.traj_filename("env", "npz")
    with open(os.path.join(ds.fifo_dir, f".{name}.tmp"), "wb") as f:
        f.write(b"PK\x03\x04half")
    ds.refresh_files()
    assert len(ds) == 0
    save_trajectory(make_traj(), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    assert len(ds) == 1


def test_count_transitions_reads_every_format_and_names_bad_files(tmp_path):
    for fmt in FORMATS:
        assert count_transitions(save_trajectory(make_traj(T=7), str(tmp_path), "env", fmt)) == 7
    os.makedirs(tmp_path / "bad")
    for kind, path in write_bad_files(tmp_path / "bad").items():
        with pytest.raises(TrajectoryFileError) as info:
            count_transitions(path)
        assert path in str(info.value), kind
    with pytest.raises(FileNotFoundError):
        count_transitions(str(tmp_path / "missing.npz"))


def test_dataset_counts_the_frames_its_buffer_received_once_each(tmp_path):
    ds = make_dataset(tmp_path)
    assert ds.frames_received() == 0
    first = save_trajectory(make_traj(T=5), ds.fifo_dir, "env", "npz")
    save_trajectory(make_traj(T=3), ds.protected_dir, "env", "npz")  # not received: put there by hand
    assert ds.frames_received() == 5
    os.remove(first)  # the FIFO bound: what was received stays counted
    save_trajectory(make_traj(T=4), ds.fifo_dir, "env", "traj")
    assert ds.frames_received() == ds.frames_received() == 9
    mixture = MixtureOfDatasets([make_dataset(tmp_path / "other"), ds], [0.5, 0.5], save_to_index=1)
    assert mixture.frames_received() == 9


def test_bad_files_raise_trajectory_file_error_naming_path(tmp_path):
    paths = write_bad_files(tmp_path)
    for kind, path in paths.items():
        with pytest.raises(TrajectoryFileError) as info:
            load_trajectory(path)
        assert path in str(info.value), kind
    # inconsistent lengths inside an otherwise well-formed file of each format
    bad = make_traj(T=5)
    bad.actions = bad.actions[:-1]
    for fmt in FORMATS:
        path = save_trajectory(bad, str(tmp_path), "env", fmt)
        with pytest.raises(TrajectoryFileError, match="actions") as info:
            load_trajectory(path)
        assert path in str(info.value)
    # an npz missing an array, an npz with no observations, an unknown suffix, a missing file
    arrays = make_traj().to_arrays()
    for name, drop in (("noact.npz", "actions"), ("noobs.npz", None)):
        kept = {k: v for k, v in arrays.items() if k != drop and (drop or not k.startswith("obs/"))}
        path = str(tmp_path / name)
        np.savez(path, **kept)
        with pytest.raises(TrajectoryFileError) as info:
            load_trajectory(path)
        assert path in str(info.value)
    path = str(tmp_path / "x.hdf5")
    open(path, "wb").close()
    with pytest.raises(TrajectoryFileError) as info:
        load_trajectory(path)
    assert path in str(info.value)
    with pytest.raises(FileNotFoundError):  # missing is not corrupt: the FIFO bound may have removed it
        load_trajectory(str(tmp_path / "missing.npz"))


def test_dataset_skips_bad_files_with_one_warning_each(tmp_path):
    ds = make_dataset(tmp_path)
    bad = write_bad_files(ds.fifo_dir)
    save_trajectory(make_traj(7), ds.protected_dir, "env", "npz")
    ds.refresh_files()
    assert len(ds) == 4
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(200):
            traj = ds.sample_random_trajectory(rng)
            assert traj.obs["pos"][0, 0] == 7, "only the good trajectory may come back"
        ds.refresh_files()  # bad files stay excluded after re-listing the folder
        assert len(ds) == 1
        for _ in range(20):
            ds.sample_random_trajectory(rng)
    # (np.load also leaks a ResourceWarning for the truncated zip; only the skip warnings count here)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == len(bad), messages
    for path in bad.values():
        assert sum(path in m for m in messages) == 1, (path, messages)


@pytest.mark.parametrize("recency", [0.0, 0.5, 1.0, 3.0])
def test_recency_weights_rise_with_age_and_leave_protected_files_at_the_mean(tmp_path, recency):
    ds = make_dataset(tmp_path, recency=recency)
    for i in range(4):  # fifo, oldest first (names sort by age)
        save_trajectory(make_traj(i, T=2), ds.fifo_dir, "env", "npz")
    save_trajectory(make_traj(9, T=2), ds.protected_dir, "env", "npz")
    ds.refresh_files()
    rng, n = np.random.default_rng(0), 40_000
    drawn = np.bincount([int(ds.sample_random_trajectory(rng).obs["pos"][0, 0]) for _ in range(n)], minlength=10)
    weights = drawn[[0, 1, 2, 3, 9]] / (n / 5)  # 1 = uniform
    # the mean weight of each quarter of age ranks x in (0, 1]: of 1 - r + 2r x up to r = 1, of (1 + r) x^r past it
    if recency <= 1:
        expected = [1 + recency * (2 * k - 3) / 4 for k in range(4)]
    else:
        expected = [4 * (((k + 1) / 4) ** (1 + recency) - (k / 4) ** (1 + recency)) for k in range(4)]
    expected.append(1.0)
    np.testing.assert_allclose(weights, expected, atol=0.05)


@pytest.mark.parametrize("recency", [-0.1, float("nan"), "1"])
def test_recency_that_is_not_a_number_from_zero_up_is_refused(tmp_path, recency):
    with pytest.raises((ValueError, TypeError), match="DiskTrajDataset.recency"):
        make_dataset(tmp_path, recency=recency)


def test_dataset_with_only_bad_files_raises_runtime_error(tmp_path):
    ds = make_dataset(tmp_path)
    bad = write_bad_files(ds.fifo_dir)
    ds.refresh_files()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="no readable trajectories"):
            ds.sample_random_trajectory(np.random.default_rng(1))
        with pytest.raises(RuntimeError):
            ds.sample_random_trajectory(np.random.default_rng(2))
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == len(bad)


# --------------------------------------------------------------------------- #
# fuzzing load_trajectory
# --------------------------------------------------------------------------- #


def check_load_outcome(path: str, original: Trajectory | None) -> None:
    """load_trajectory either returns the (validated) original or raises TrajectoryFileError."""
    try:
        loaded = load_trajectory(path)
    except TrajectoryFileError as e:
        assert path in str(e)
        return
    loaded.validate()
    assert original is not None, "random bytes must never load as a trajectory"
    assert_same_traj(original, loaded)


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=400))
@example(data=b"")
@example(data=b"PK\x03\x04" + b"\x00" * 60)
@example(data=b"PK\x05\x06" + b"\x00" * 18)
def test_random_bytes_as_npz_raise_trajectory_file_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "random.npz")
        with open(path, "wb") as f:
            f.write(data)
        check_load_outcome(path, None)


_FUZZ_TRAJ = make_traj(4, T=6, A=2)


def _raw_file(fmt: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        with open(save_trajectory(_FUZZ_TRAJ, d, "fuzz", fmt), "rb") as f:
            return f.read()


_RAW = {fmt: _raw_file(fmt) for fmt in FORMATS}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), frac=st.floats(0.0, 1.0))
@example(fmt="npz", frac=1.0)
@example(fmt="npz-compressed", frac=1.0)
@example(fmt="traj", frac=1.0)
@example(fmt="traj", frac=0.999)
@example(fmt="npz", frac=0.999)
def test_truncated_valid_files_load_only_when_complete(fmt, frac):
    raw = _RAW[fmt]
    cut = int(round(frac * len(raw)))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cut" + SUFFIX[fmt])
        with open(path, "wb") as f:
            f.write(raw[:cut])
        if cut == len(raw):
            assert_same_traj(_FUZZ_TRAJ, load_trajectory(path))
        else:
            with pytest.raises(TrajectoryFileError):
                load_trajectory(path)


# Byte strings found by fuzzing that make pickle raise something other than the caught types.
_PICKLE_CRASHERS = [
    b"\x8d" + b"\xff" * 8,  # BINUNICODE8 with a huge length -> OverflowError
    b"\x8e" + (2**62).to_bytes(8, "little"),  # BINBYTES8 with a huge length -> MemoryError
    b"(\x88\x98\x8c:",  # MARK, NEWTRUE, BYTEARRAY8 over a bool ... -> TypeError
]


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=200))
@example(data=_PICKLE_CRASHERS[0])
def test_random_bytes_as_traj_raise_trajectory_file_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "random.traj")
        with open(path, "wb") as f:
            f.write(data)
        check_load_outcome(path, None)


@pytest.mark.parametrize(
    "data",
    [  # pickle itself would raise these: OverflowError, MemoryError, TypeError
        pytest.param(data, id=name) for data, name in zip(_PICKLE_CRASHERS, ("overflow", "memory", "type"))
    ],
)
def test_corrupt_pickle_bytes_raise_trajectory_file_error(tmp_path, data):
    path = str(tmp_path / "corrupt.traj")
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(TrajectoryFileError):
        load_trajectory(path)


def _corrupt_npz_variants(folder) -> dict[str, str]:
    """Foreign or damaged .npz files that are not truncations."""
    out = {}
    # a plain .npy saved under an .npz name
    out["npy_named_npz"] = os.path.join(folder, "npy.npz")
    with open(out["npy_named_npz"], "wb") as f:
        np.save(f, np.arange(5))
    # scalar (0-d) arrays under the expected keys
    arrays = make_traj().to_arrays()
    arrays["rl2s"] = np.float32(1.0)
    out["scalar_array"] = os.path.join(folder, "scalar.npz")
    np.savez(out["scalar_array"], **arrays)
    # a damaged deflate stream (first block header says "reserved block type")
    path = save_trajectory(make_traj(), folder, "env", "npz-compressed")
    raw = bytearray(open(path, "rb").read())
    os.remove(path)
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = z.getinfo("rl2s.npy")
    off = info.header_offset
    name_len, extra_len = (
        int.from_bytes(raw[off + 26 : off + 28], "little"),
        int.from_bytes(raw[off + 28 : off + 30], "little"),
    )
    raw[off + 30 + name_len + extra_len] = 0xFF
    out["bad_deflate"] = os.path.join(folder, "deflate.npz")
    with open(out["bad_deflate"], "wb") as f:
        f.write(raw)
    # an unknown compression method in the central directory
    raw = bytearray(open(save_trajectory(make_traj(), folder, "env2", "npz"), "rb").read())
    i = raw.find(b"PK\x01\x02")
    raw[i + 10 : i + 12] = (99).to_bytes(2, "little")
    out["unknown_method"] = os.path.join(folder, "method.npz")
    with open(out["unknown_method"], "wb") as f:
        f.write(raw)
    return out


# numpy / zipfile would raise TypeError, TypeError, zlib.error and NotImplementedError on these
@pytest.mark.parametrize("kind", ["npy_named_npz", "scalar_array", "bad_deflate", "unknown_method"])
def test_damaged_npz_raises_trajectory_file_error(tmp_path, kind):
    path = _corrupt_npz_variants(str(tmp_path))[kind]
    with pytest.raises(TrajectoryFileError):
        load_trajectory(path)


def test_dataset_skips_pickle_crasher(tmp_path):
    ds = make_dataset(tmp_path)
    with open(os.path.join(ds.fifo_dir, "00000000000000000001_bad.traj"), "wb") as f:
        f.write(_PICKLE_CRASHERS[0])
    save_trajectory(make_traj(1), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(10):
            assert ds.sample_random_trajectory(np.random.default_rng(seed)).obs["pos"][0, 0] == 1


def test_traj_pickle_without_observations_is_rejected(tmp_path):
    traj = make_traj()
    traj.obs = {}
    path = str(tmp_path / "noobs.traj")
    with open(path, "wb") as f:
        pickle.dump(traj, f)
    with pytest.raises(TrajectoryFileError):
        load_trajectory(path)


# --------------------------------------------------------------------------- #
# the fast reader for np.savez's layout
# --------------------------------------------------------------------------- #


def _fast_read(path: str) -> dict[str, np.ndarray] | None:
    with open(path, "rb") as f:
        return trajectory_module._read_stored_npz(f)


def _numpy_read(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@settings(max_examples=30, deadline=None)
@given(T=st.integers(0, 12), A=st.integers(1, 4), discrete=st.booleans(), tid=st.integers(0, 99))
def test_fast_npz_reader_matches_numpy(T, A, discrete, tid):
    traj = make_traj(tid, T=T, A=A, discrete=discrete)
    with tempfile.TemporaryDirectory() as d:
        path = save_trajectory(traj, d, "env", "npz")
        fast, slow = _fast_read(path), _numpy_read(path)
        assert fast is not None, "files written by save_trajectory take the fast path"
        assert fast.keys() == slow.keys()
        for k in slow:
            assert fast[k].dtype == slow[k].dtype and fast[k].shape == slow[k].shape, k
            np.testing.assert_array_equal(fast[k], slow[k], err_msg=k)
            assert fast[k].flags.writeable, "like numpy's arrays, the loaded arrays may be changed in place"
        assert_same_traj(traj, load_trajectory(path))


def test_other_npz_layouts_fall_back_to_numpy(tmp_path):
    traj = make_traj(5, T=7)
    # compressed members
    compressed = save_trajectory(traj, str(tmp_path), "env", "npz-compressed")
    # a Fortran-ordered array
    arrays = traj.to_arrays()
    arrays["obs/pos"] = np.asfortranarray(arrays["obs/pos"])
    fortran = str(tmp_path / "fortran.npz")
    np.savez(fortran, **arrays)
    # a zip comment
    commented = save_trajectory(traj, str(tmp_path), "env", "npz")
    with zipfile.ZipFile(commented, "a") as z:
        z.comment = b"written by hand"
    for path in (compressed, fortran, commented):
        assert _fast_read(path) is None
        assert_same_traj(traj, load_trajectory(path))


def test_flipped_data_byte_in_npz_is_caught_by_the_crc(tmp_path):
    path = save_trajectory(make_traj(1, T=20), str(tmp_path), "env", "npz")
    raw = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("obs/pos.npy")
    raw[info.header_offset + 200] ^= 0x01  # inside the array data, past the local and .npy headers
    with open(path, "wb") as f:
        f.write(raw)
    assert _fast_read(path) is None
    with pytest.raises(TrajectoryFileError, match="CRC"):
        load_trajectory(path)


# --------------------------------------------------------------------------- #
# FIFO bound
# --------------------------------------------------------------------------- #


def test_fifo_bound_deletes_oldest_and_spares_protected(tmp_path):
    ds = make_dataset(tmp_path, dset_max_size=4)
    protected = [save_trajectory(make_traj(100 + i, T=2), ds.protected_dir, "old", "npz") for i in range(3)]
    fifo = [save_trajectory(make_traj(i, T=2), ds.fifo_dir, "env", fmt) for i, fmt in enumerate(FORMATS * 3)]
    assert len(fifo) == 9
    metrics = ds.on_end_of_collection()
    assert metrics == {"buffer/trajectories": 4 + 3, "buffer/deleted": 5}
    assert visible_files(ds.fifo_dir) == sorted(os.path.basename(p) for p in fifo[-4:])
    assert all(os.path.exists(p) for p in protected)
    assert len(ds) == 7
    ids = {int(ds.sample_random_trajectory(np.random.default_rng(s)).obs["pos"][0, 0]) for s in range(200)}
    assert ids == {5, 6, 7, 8, 100, 101, 102}
    # under the bound nothing more goes
    assert ds.on_end_of_collection()["buffer/deleted"] == 0
    assert len(visible_files(ds.fifo_dir)) == 4
    # new data pushes out exactly the oldest remaining ones
    newer = [save_trajectory(make_traj(20 + i, T=2), ds.fifo_dir, "env", "npz") for i in range(2)]
    assert ds.on_end_of_collection() == {"buffer/trajectories": 7, "buffer/deleted": 2}
    assert visible_files(ds.fifo_dir) == sorted(os.path.basename(p) for p in fifo[-2:] + newer)


def test_no_edit_rights_deletes_nothing(tmp_path):
    writer = make_dataset(tmp_path, dset_max_size=2)
    paths = [save_trajectory(make_traj(i, T=2), writer.fifo_dir, "env", "npz") for i in range(5)]
    reader = make_dataset(tmp_path, dset_max_size=2, has_edit_rights=False)
    metrics = reader.on_end_of_collection()
    assert metrics == {"buffer/trajectories": 5, "buffer/deleted": 0}
    assert all(os.path.exists(p) for p in paths)
    with pytest.raises(PermissionError):
        reader.delete_from_disk()
    assert all(os.path.exists(p) for p in paths)


def test_deleting_the_buffer_keeps_the_rest_of_the_run_folder(tmp_path):
    ds = make_dataset(tmp_path)
    save_trajectory(make_traj(0, T=2), ds.fifo_dir, "env", "npz")
    run_folder = os.path.dirname(ds.buffer_dir)
    with open(os.path.join(run_folder, "metrics.jsonl"), "w") as f:
        f.write("{}\n")
    ds.delete_from_disk()
    assert not os.path.exists(ds.buffer_dir)
    assert os.path.exists(os.path.join(run_folder, "metrics.jsonl"))


def test_dataset_rejects_bad_sizes(tmp_path):
    for kw in ({"dset_max_size": 0}, {"dset_min_size": -1}):
        with pytest.raises(ValueError):
            make_dataset(tmp_path, **kw)


def test_ready_for_training_follows_min_size(tmp_path):
    ds = make_dataset(tmp_path, dset_min_size=2)
    assert not ds.ready_for_training
    save_trajectory(make_traj(0), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    assert not ds.ready_for_training
    save_trajectory(make_traj(1), ds.fifo_dir, "env", "traj")
    ds.refresh_files()
    assert ds.ready_for_training


def test_file_deleted_by_fifo_since_refresh_is_dropped_silently(tmp_path):
    ds = make_dataset(tmp_path)
    gone = save_trajectory(make_traj(0), ds.fifo_dir, "env", "npz")
    save_trajectory(make_traj(1), ds.fifo_dir, "env", "npz")
    ds.refresh_files()
    os.remove(gone)  # another process enforced the FIFO bound
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(30):
            assert ds.sample_random_trajectory(np.random.default_rng(seed)).obs["pos"][0, 0] == 1
    assert [str(w.message) for w in caught] == []


# --------------------------------------------------------------------------- #
# windows
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("mode", PADDED_SAMPLING)
def test_sample_window_bounds(mode):
    rng = np.random.default_rng(0)
    seq_len = 6
    for n in (1, 2, 5, 6, 7, 20):
        for _ in range(300):
            start, end = sample_window(n, seq_len, mode, rng)
            assert isinstance(start, int) and isinstance(end, int)
            assert 0 <= start < end <= n, (n, start, end)
            assert end - start <= seq_len
            if mode == "none":
                assert end - start == min(n, seq_len), (n, start, end)


@pytest.mark.parametrize("mode", PADDED_SAMPLING)
def test_sample_window_padding_sides(mode):
    rng = np.random.default_rng(1)
    n, seq_len = 20, 6
    draws = [sample_window(n, seq_len, mode, rng) for _ in range(3000)]
    short_left = [(s, e) for s, e in draws if s == 0 and e - s < seq_len]  # cut by the trajectory start
    short_right = [(s, e) for s, e in draws if e == n and e - s < seq_len]  # cut by the trajectory end
    full_starts = {s for s, e in draws if e - s == seq_len}
    assert bool(short_left) == (mode in ("left", "both"))
    assert bool(short_right) == (mode in ("right", "both"))
    assert full_starts == set(range(n - seq_len + 1)), "every full window is reachable"
    if mode in ("left", "both"):
        assert {e for _, e in short_left} == set(range(1, seq_len))
    if mode in ("right", "both"):
        assert {s for s, _ in short_right} == set(range(n - seq_len + 1, n))


def test_sample_window_and_sampler_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="padded_sampling"):
        sample_window(10, 4, "middle", np.random.default_rng(0))
    ds = make_dataset(tmp_path)
    with pytest.raises(ValueError):
        SequenceSampler(ds, 1)
    with pytest.raises(ValueError):
        SequenceSampler(ds, 4, "middle")


# --------------------------------------------------------------------------- #
# batches
# --------------------------------------------------------------------------- #

B, L, A = 5, 8, 3
LENGTHS = (1, 2, 3, 5, 8, 9, 14, 25)  # timesteps: shorter, equal and longer than L


@pytest.fixture(scope="module")
def batch_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    ds = DiskTrajDataset(str(root), "dset")
    trajs = {}
    for tid, n in enumerate(LENGTHS):
        trajs[tid] = make_traj(tid, T=n - 1, A=A, discrete=tid % 2 == 0, terminated=tid % 3 != 0)
        save_trajectory(trajs[tid], ds.fifo_dir, f"env{tid}", FORMATS[tid % len(FORMATS)])
    ds.refresh_files()
    assert len(ds) == len(LENGTHS)
    return ds, trajs


def check_batch(batch: Batch, trajs: dict[int, Trajectory], batch_size: int = B) -> list[tuple[int, int, int]]:
    """Check shapes, dtypes, padding and contents; return (traj id, start, length) per row."""
    assert set(batch.obs) == {"pos", "img"}
    assert batch.obs["pos"].shape == (batch_size, L, 3) and batch.obs["pos"].dtype == torch.float32
    assert batch.obs["img"].shape == (batch_size, L, 2, 3) and batch.obs["img"].dtype == torch.uint8
    assert batch.rl2s.shape == (batch_size, L, 1 + A) and batch.rl2s.dtype == torch.float32
    assert batch.time_idxs.shape == (batch_size, L, 1) and batch.time_idxs.dtype == torch.int64
    assert batch.pad_mask.shape == (batch_size, L, 1) and batch.pad_mask.dtype == torch.bool
    assert batch.actions.shape == (batch_size, L - 1, A) and batch.actions.dtype == torch.float32
    assert batch.rews.shape == (batch_size, L - 1, 1) and batch.rews.dtype == torch.float32
    assert batch.dones.shape == (batch_size, L - 1, 1) and batch.dones.dtype == torch.float32
    assert torch.equal(batch.transition_mask, batch.pad_mask[:, 1:])
    rows = []
    for b in range(batch_size):
        mask = batch.pad_mask[b, :, 0].numpy()
        m = int(mask.sum())
        assert m >= 1 and mask[:m].all() and not mask[m:].any(), "real timesteps first, then padding"
        tid = int(batch.obs["pos"][b, 0, 0])
        traj = trajs[tid]
        times = batch.time_idxs[b, :m, 0].numpy()
        s = int(times[0])
        np.testing.assert_array_equal(times, np.arange(s, s + m))
        assert s + m <= len(traj)
        for k in ("pos", "img"):
            np.testing.assert_array_equal(batch.obs[k][b, :m].numpy(), traj.obs[k][s : s + m])
            assert not batch.obs[k][b, m:].any(), f"obs[{k}] padding must be zeros"
        np.testing.assert_array_equal(batch.rl2s[b, :m].numpy(), traj.rl2s[s : s + m])
        np.testing.assert_array_equal(batch.actions[b, : m - 1].numpy(), traj.actions[s : s + m - 1])
        np.testing.assert_array_equal(batch.rews[b, : m - 1].numpy(), traj.rews[s : s + m - 1])
        np.testing.assert_array_equal(batch.dones[b, : m - 1].numpy(), traj.dones[s : s + m - 1].astype(np.float32))
        for name in ("rl2s", "time_idxs"):
            assert not getattr(batch, name)[b, m:].any(), f"{name} padding must be zeros"
        for name in ("actions", "rews", "dones"):
            assert not getattr(batch, name)[b, m - 1 :].any(), f"{name} padding must be zeros"
        assert int(batch.transition_mask[b].sum()) == m - 1
        rows.append((tid, s, m))
    return rows


@pytest.mark.parametrize("mode", PADDED_SAMPLING)
def test_dataloader_batches_workers0(batch_dataset, mode):
    ds, trajs = batch_dataset
    loader = make_dataloader(ds, seq_len=L, batch_size=B, batches=12, padded_sampling=mode, workers=0)
    batches = list(loader)
    assert len(batches) == 12
    rows = [r for batch in batches for r in check_batch(batch, trajs)]
    assert len({tid for tid, _, _ in rows}) >= 6, "windows come from many trajectories"
    for tid, s, m in rows:
        n = len(trajs[tid])
        if mode == "none":
            assert m == min(n, L)
        if mode == "right":
            assert m == L or s + m == n
        if mode == "left":
            assert m == L or s == 0 or n < L
    if mode != "none":
        assert any(m < min(len(trajs[tid]), L) for tid, _, m in rows), "padded sampling pads sometimes"
    moved = batches[0].to("cpu")
    assert torch.equal(moved.obs["pos"], batches[0].obs["pos"]) and torch.equal(moved.dones, batches[0].dones)


def test_dataloader_batches_two_workers(batch_dataset):
    ds, trajs = batch_dataset
    torch.manual_seed(0)
    loader = make_dataloader(ds, seq_len=L, batch_size=B, batches=6, padded_sampling="both", workers=2)
    batches = list(loader)
    assert len(batches) == 6
    rows = [check_batch(batch, trajs) for batch in batches]
    # the DataLoader hands batch i to worker i % 2: the two workers must draw different windows
    worker0, worker1 = rows[0::2], rows[1::2]
    assert worker0 != worker1, "both workers produced the same sample stream"
    assert rows[0] != rows[1]


def _epoch_windows(ds, workers):
    loader = make_dataloader(ds, seq_len=L, batch_size=B, batches=4, padded_sampling="both", workers=workers)
    return [(b.obs["pos"][:, :, :2].tolist(), b.pad_mask.sum().item()) for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_new_loader_draws_new_windows(batch_dataset, workers):
    ds, _ = batch_dataset
    torch.manual_seed(0)
    first, second = _epoch_windows(ds, workers), _epoch_windows(ds, workers)
    assert first != second, "two epochs replayed the same windows"


def test_collated_windows_keep_one_hot_actions(batch_dataset):
    ds, trajs = batch_dataset
    sampler = SequenceSampler(ds, L, "none", items_per_epoch=3)
    assert len(sampler) == 3
    for _ in range(30):
        item = sampler[0]
        tid = int(item["obs"]["pos"][0, 0])
        m = int(item["pad_mask"].sum())
        if tid % 2 == 0 and m > 1:
            np.testing.assert_array_equal(item["actions"][: m - 1].sum(1), 1.0)


# --------------------------------------------------------------------------- #
# mixtures
# --------------------------------------------------------------------------- #


class TaggedDataset(RLDataset):
    """Always returns the same trajectory, tagged by ``tid``."""

    def __init__(self, tid: int, ready: bool = True, folder: str | None = None):
        self.traj, self.ready, self.folder, self.collections = make_traj(tid, T=2), ready, folder, 0

    def sample_random_trajectory(self, rng):
        return self.traj

    @property
    def save_new_trajs_to(self):
        return self.folder

    @property
    def ready_for_training(self):
        return self.ready

    def on_end_of_collection(self):
        self.collections += 1
        return {"n": float(self.collections)}


@pytest.mark.parametrize("weights", [[0.8, 0.2], [4.0, 1.0]])
def test_mixture_samples_by_weight(weights):
    mix = MixtureOfDatasets([TaggedDataset(0), TaggedDataset(1)], weights)
    rng = np.random.default_rng(0)
    draws = np.array([mix.sample_random_trajectory(rng).obs["pos"][0, 0] for _ in range(2000)])
    frac0 = float((draws == 0).mean())
    assert abs(frac0 - 0.8) < 0.04, frac0  # ~4.5 standard deviations
    assert set(np.unique(draws)) == {0.0, 1.0}


def test_mixture_zero_weight_and_bookkeeping():
    a, b, c = TaggedDataset(0, folder="/a"), TaggedDataset(1, ready=False, folder="/b"), TaggedDataset(2, folder="/c")
    mix = MixtureOfDatasets([a, b, c], [1.0, 0.0, 1.0], save_to_index=2)
    rng = np.random.default_rng(0)
    assert {int(mix.sample_random_trajectory(rng).obs["pos"][0, 0]) for _ in range(300)} == {0, 2}
    assert mix.ready_for_training, "a dataset with weight 0 does not hold training back"
    assert mix.save_new_trajs_to == "/c"
    assert mix.on_end_of_collection() == {"n/0": 1.0, "n/1": 1.0, "n/2": 1.0}
    assert "MixtureOfDatasets" in mix.get_description()
    assert not MixtureOfDatasets([a, b], [0.5, 0.5]).ready_for_training


@pytest.mark.parametrize(
    "datasets,weights",
    [(2, [0.5]), (2, [0.5, 0.3, 0.2]), (0, []), (2, [-0.1, 1.1]), (2, [0.0, 0.0]), (1, [-1.0])],
    ids=["too-few", "too-many", "empty", "negative", "all-zero", "single-negative"],
)
def test_mixture_rejects_bad_weights(datasets, weights):
    with pytest.raises(ValueError):
        MixtureOfDatasets([TaggedDataset(i) for i in range(datasets)], weights)
