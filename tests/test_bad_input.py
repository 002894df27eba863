"""Every bad input of issue #8 fails with an error naming the problem and the fix, and leaves the files
of an existing run (buffer, checkpoints, config, metrics, plots) exactly as they were."""

from __future__ import annotations

import builtins
import errno
import functools
import hashlib
import os
import re
import shutil
from pathlib import Path

import gin
import gymnasium as gym
import numpy as np
import pytest
from helpers import load_example

import amago_like.io as io_module
from amago_like import CheckpointError, DarkRoom, DiskTrajDataset, Experiment, MetaBandit, Metaworld, RunExistsError
from amago_like.checks import ConfigTypeError, DiskFullError, NotWritableError
from amago_like.cli import REPO_ROOT, apply_gin, run
from amago_like.data import load_trajectory, save_trajectory

TINY = os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")
SETTINGS = dict(
    max_seq_len=7, val_timesteps_per_epoch=12, parallel_actors=2, env_mode="sync", train_timesteps_per_epoch=12,
    train_batches_per_epoch=3, batch_size=4, val_interval=1, ckpt_interval=1, verbose=False, seed=0,
)  # fmt: skip


def toy_args(root: Path, *extra: str) -> list[str]:
    """The toy example's flags for the existing run (the tiny model and the settings above)."""
    flags = ["--buffer_dir", str(root), "--run_name", "run", "--configs", TINY, "--env_mode", "sync"]
    flags += ["--parallel_actors", "2", "--epochs", "2", "--max_seq_len", "7", "--batch_size", "4"]
    for binding in ("val_timesteps_per_epoch = 12", "train_timesteps_per_epoch = 12", "verbose = False"):
        flags += ["--gin", f"Experiment.{binding}"]
    return flags + list(extra)


def make_experiment(root: Path, **overrides) -> Experiment:
    """An experiment on the existing run ``root/run``, configured as the one that wrote it."""
    apply_gin([TINY], [])
    kwargs = dict(
        run_name="run", ckpt_base_dir=str(root), dataset=DiskTrajDataset(str(root), "run"),
        make_train_env=MetaBandit, make_val_env=MetaBandit, epochs=2, **SETTINGS,
    )  # fmt: skip
    kwargs.update(overrides)
    return Experiment(**kwargs)


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """One trained epoch of the tiny bandit: trajectories, a checkpoint, the latest policy, config, metrics, plots."""
    root = tmp_path_factory.mktemp("existing")
    gin.clear_config()
    run(make_experiment(root, epochs=1))
    gin.clear_config()
    return root


@pytest.fixture
def root(existing_run, tmp_path) -> Path:
    """A fresh copy of the existing run for one test."""
    return Path(shutil.copytree(existing_run, tmp_path / "runs"))


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def assert_untouched(root: Path, before: dict[str, str], new_files_ok: bool = False) -> None:
    after = snapshot(root)
    assert [p for p in before if p not in after] == [], "files were lost"
    assert [p for p in before if p in after and after[p] != before[p]] == [], "files were changed"
    if not new_files_ok:
        assert sorted(after) == sorted(before), "files were added"
    assert not [p for p in after if p.endswith(".tmp")], "temporary files were left behind"


class FullDisk:
    """Patches ``open`` in amago_like.io, where every writer opens its files: after ``files_that_fit`` whole
    files under a folder named ``under``, files opened for writing there share ``space`` bytes, then raise
    ENOSPC (after writing what still fitted, as a real disk does). Files elsewhere are written as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, space: int, under: str, files_that_fit: int = 0) -> None:
        self.space, self.files_that_fit, self.under = space, files_that_fit, under
        monkeypatch.setattr(io_module, "open", self.open, raising=False)

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if not any(c in mode for c in "wax") or f"/{self.under}/" not in str(path):
            return f
        self.files_that_fit -= 1
        return f if self.files_that_fit >= 0 else _CappedFile(f, self)


class _CappedFile:
    def __init__(self, f, disk: FullDisk) -> None:
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self._disk.space:
            self._f.write(memoryview(data).cast("B")[: self._disk.space])
            self._disk.space = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.space -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _fifo(root: Path) -> Path:
    return root / "run" / "buffer" / "fifo"


def test_existing_run_has_every_kind_of_file(existing_run):
    files = snapshot(existing_run)
    for expected in ("run/config.gin", "run/metrics.jsonl", "run/ckpts/training_states/epoch_1/state.pt",
                     "run/ckpts/policy_weights/policy_epoch_1.pt", "run/ckpts/latest/policy.pt"):  # fmt: skip
        assert expected in files
    assert [p for p in files if p.startswith("run/buffer/fifo/")] and [p for p in files if p.startswith("run/plots/")]


# ------------------------------------------------------------------ unknown benchmark or task
def test_unknown_metaworld_benchmark(root):
    pytest.importorskip("metaworld")
    before = snapshot(root)
    with pytest.raises(SystemExit, match=r"Unknown Meta-World benchmark 'reach-v2'\. .*use 'reach-v3'.*valid names"):
        load_example("metaworld").main(["--benchmark", "reach-v2", "--buffer_dir", str(root), "--run_name", "run"])
    assert_untouched(root, before)


def test_unknown_toy_env(root, capsys):
    before = snapshot(root)
    with pytest.raises(SystemExit):
        load_example("toy").main(toy_args(root, "--env", "dark_rooom"))
    assert "invalid choice: 'dark_rooom' (choose from 'bandit', 'dark_room')" in capsys.readouterr().err
    assert_untouched(root, before)


def test_unknown_task_split(root):
    before = snapshot(root)
    exp = make_experiment(root, make_train_env=functools.partial(DarkRoom, split="validation"))
    with pytest.raises(ValueError, match="unknown DarkRoom split 'validation'; valid splits are 'train', 'test'"):
        run(exp, resume=True)
    assert_untouched(root, before)


# ------------------------------------------------------------------ unknown gin binding or wrong type
@pytest.mark.parametrize(
    "binding, message",
    [
        ("Experiment.epochz = 3", r"Experiment.epochz = 3.*did you mean Experiment\.epochs\?"),
        ("TformerTrajEncodr.n_layers = 2", r"No configurable matching 'TformerTrajEncodr'.*e\.g\. TformerTrajEncoder"),
    ],
)
def test_unknown_gin_binding(root, binding, message):
    before = snapshot(root)
    with pytest.raises(SystemExit, match=f"(?s){message}"):
        load_example("toy").main(toy_args(root, "--gin", binding))
    assert_untouched(root, before)


@pytest.mark.parametrize(
    "binding, message",
    [
        ('DiskTrajDataset.dset_max_size = "big"', "DiskTrajDataset.dset_max_size must be an integer, got 'big' (str)"),
        ("TformerTrajEncoder.n_layers = 2.5", "TformerTrajEncoder.n_layers must be an integer, got 2.5 (float)"),
        ('MetaBandit.n_arms = "3"', "MetaBandit.n_arms must be an integer, got '3' (str)"),
        ('Experiment.learning_rate = "fast"', "Experiment.learning_rate must be a number, got 'fast'"),
    ],
)
def test_wrong_type_gin_binding(root, binding, message):
    before = snapshot(root)
    with pytest.raises(SystemExit, match=re.escape(message) + ".*without quotes") as exit_info:
        load_example("toy").main(toy_args(root, "--resume", "--gin", binding))
    assert exit_info.value.code == 2  # refused while parsing, as a usage error
    assert_untouched(root, before)


def test_wrong_type_metaworld_binding(root):
    """Fails in Metaworld's own check, before Meta-World is imported or a simulator built."""
    before = snapshot(root)
    exp = make_experiment(root, make_train_env=functools.partial(Metaworld, "reach-v3"))
    gin.parse_config('Metaworld.k_episodes = "3"')
    with pytest.raises(ConfigTypeError, match=r"Metaworld.k_episodes must be an integer, got '3' \(str\)"):
        run(exp, resume=True)
    assert_untouched(root, before)


# ------------------------------------------------------------------ max_seq_len / batch size that cannot work
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_seq_len", "1"], r"Experiment.max_seq_len must be >= 2 \(a timestep and the next one\), got 1"),
        (["--batch_size", "0"], "Experiment.batch_size must be >= 1, got 0"),
    ],
)
def test_impossible_sequence_length_or_batch_size(root, flags, message):
    before = snapshot(root)
    with pytest.raises(ValueError, match=message):
        load_example("toy").main(toy_args(root, "--resume", *flags))
    assert_untouched(root, before)


# ------------------------------------------------------------------ checkpoint of another model shape
def test_resume_with_a_different_model_shape(root):
    before = snapshot(root)
    with pytest.raises(
        CheckpointError,
        match=r"saved from a different model shape \(other shapes: .*\); build the experiment with .*config.gin",
    ):
        load_example("toy").main(toy_args(root, "--resume", "--gin", "TformerTrajEncoder.d_model = 32"))
    assert_untouched(root, before)  # config.gin too: still the run's own


def test_fresh_run_on_an_existing_run_name(root):
    before = snapshot(root)
    with pytest.raises(RunExistsError, match=r"already holds a run .*Pass --resume to continue it, choose another"):
        load_example("toy").main(toy_args(root))
    assert_untouched(root, before)


# ------------------------------------------------------------------ observations the encoders cannot handle
class TextEnv(gym.Env):
    observation_space = gym.spaces.Text(8)
    action_space = gym.spaces.Discrete(2)


def test_unsupported_observation_space(root):
    before = snapshot(root)
    exp = make_experiment(root, make_train_env=TextEnv, make_val_env=TextEnv)
    with pytest.raises(TypeError, match="AMAGOEnv needs Box observations.*FlattenObservation"):
        run(exp, resume=True)
    assert_untouched(root, before)


# ------------------------------------------------------------------ env returning NaN or the wrong shape
class BadBandit(MetaBandit):
    """A bandit whose third pull returns ``bad_obs``."""

    bad_obs = np.array([np.nan], np.float32)

    def step(self, action):
        obs, *rest = super().step(action)
        return (self.bad_obs if self._pull == 3 else obs), *rest


class WrongShapeBandit(BadBandit):
    bad_obs = np.zeros(2, np.float32)


@pytest.mark.parametrize(
    "env, message",
    [
        (BadBandit, "bandit-3arms: observation 'observation' contains NaN or inf at step 3; fix the env, or wrap it"),
        (
            WrongShapeBandit,
            r"bandit-3arms: observation 'observation' has shape \(2,\), expected \(1,\) \(its observation_space\); fix the env",
        ),
    ],
)
def test_env_returning_nan_or_wrong_shape(root, env, message):
    before = snapshot(root)
    exp = make_experiment(root, make_train_env=env)
    with pytest.raises(ValueError, match=message):
        run(exp, resume=True)
    assert_untouched(root, before)


# ------------------------------------------------------------------ unwritable buffer directory
def _deny_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Simulate a folder without write permission: creating files under it raises EACCES."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


@pytest.mark.parametrize("how", ["chmod", "simulated"])
@pytest.mark.parametrize(
    "folder, message", [("run/buffer/fifo", "the trajectory buffer folder"), ("run", "the run folder")]
)
def test_unwritable_buffer_dir_fails_before_any_work(root, monkeypatch, how, folder, message):
    target = root / folder
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("running as root: permissions do not block writes (the simulated case covers this)")
        target.chmod(0o555)
    else:
        _deny_writes_under(monkeypatch, target)
    before = snapshot(root)
    try:
        with pytest.raises(
            NotWritableError, match=f"{message} .*{folder} is not writable.*choose another --buffer_dir"
        ):
            load_example("toy").main(toy_args(root, "--resume"))
    finally:
        target.chmod(0o755)
    assert_untouched(root, before)


# ------------------------------------------------------------------ disk full
@pytest.mark.parametrize("space", [0, 300])  # nothing fits / the write fails part-way
def test_disk_full_saving_a_trajectory(root, monkeypatch, space):
    before = snapshot(root)
    traj = load_trajectory(str(next(_fifo(root).iterdir())))
    FullDisk(monkeypatch, space, "buffer")
    with pytest.raises(DiskFullError, match=f"disk full: could not write {_fifo(root)}/.*dset_max_size.*--resume"):
        save_trajectory(traj, str(_fifo(root)), "bandit")
    assert_untouched(root, before)


def test_disk_full_during_collection_stops_the_run(root, monkeypatch):
    before = snapshot(root)
    exp = make_experiment(root)
    FullDisk(monkeypatch, 0, "buffer")
    with pytest.raises(
        DiskFullError, match="(?s)disk full: could not write .*checkpoint of epoch 1 is already on disk"
    ):
        run(exp, resume=True)
    assert_untouched(root, before, new_files_ok=True)


def test_disk_full_checkpoints_the_run_before_stopping(root, monkeypatch):
    """A new run beside the existing one: its second collection fills the disk; the state after its first
    epoch (not checkpointed yet) is saved before the error is raised."""
    before = snapshot(root)
    exp = make_experiment(root, run_name="new", dataset=DiskTrajDataset(str(root), "new"), ckpt_interval=None)
    FullDisk(monkeypatch, 0, "buffer", files_that_fit=4)  # epoch 0 writes 4 episodes
    with pytest.raises(DiskFullError, match="(?s)disk full: .*checkpointed the training state before stopping"):
        run(exp)
    assert exp.checkpoint_epochs() == [1] and exp.grad_updates == 3
    assert len(list((root / "new" / "buffer" / "fifo").iterdir())) == 4
    assert_untouched(root, before, new_files_ok=True)


@pytest.mark.parametrize("fits", ["nothing", "state only"])
def test_disk_full_writing_a_checkpoint(root, monkeypatch, fits):
    before = snapshot(root)
    exp = make_experiment(root)
    exp.start()
    exp.load_latest_checkpoint()
    exp.epoch = 2
    state_size = (root / "run" / "ckpts" / "training_states" / "epoch_1" / "state.pt").stat().st_size
    FullDisk(monkeypatch, 0 if fits == "nothing" else state_size + 100, "ckpts")
    with pytest.raises(DiskFullError, match=r"disk full: could not write .*keep_checkpoints.*--resume"):
        exp.save_checkpoint()
    exp.close()
    assert exp.checkpoint_epochs() == [1]
    assert_untouched(root, before)
