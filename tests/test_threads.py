"""Issue 23, items 1 and 9: torch's thread count per process, chosen by role unless the user chose."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from amago_like import DiskTrajDataset, Experiment, MetaBandit
from amago_like.cli import REPO_ROOT, apply_gin
from amago_like.envs.vector import close_envs, finished_episodes, make_vector_env
from amago_like.threads import THREAD_ENV_VARS, automatic_threads, set_torch_threads


@pytest.fixture
def threads_unset(monkeypatch):
    """No thread count in the environment; torch's own count restored afterwards."""
    for var in THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_automatic_threads_leave_cores_to_acting_and_other_processes():
    assert automatic_threads("collect", cpus=64) == 1
    assert automatic_threads("learn", cpus=2) == automatic_threads("both", cpus=2) == 1
    assert automatic_threads("both", cpus=16) == 8
    assert automatic_threads("learn", processes=4, cpus=16) == 2  # DDP: shared among the machine's processes
    assert automatic_threads("learn", processes=4, cpus=2) == 1


def test_an_explicit_count_wins_and_the_environment_is_respected(threads_unset, monkeypatch):
    assert set_torch_threads(3, "collect") == torch.get_num_threads() == 3
    assert set_torch_threads(None, "collect") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user chose: torch keeps what it has
    torch.set_num_threads(2)
    assert set_torch_threads(None, "collect") == 2
    assert set_torch_threads(1, "learn") == 1


def _bandit_experiment(root, **overrides) -> Experiment:
    apply_gin([os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")], [])
    kwargs = dict(
        run_name="run", ckpt_base_dir=str(root), max_seq_len=7, dataset=DiskTrajDataset(str(root), "run"),
        make_train_env=MetaBandit, make_val_env=MetaBandit, val_timesteps_per_epoch=6, parallel_actors=2,
        env_mode="sync", epochs=1, train_timesteps_per_epoch=6, train_batches_per_epoch=1, batch_size=2,
        verbose=False,
    )  # fmt: skip
    kwargs.update(overrides)
    return Experiment(**kwargs)


@pytest.mark.parametrize("role, torch_threads, expected", [
    ("collect", None, 1),
    ("learn", None, automatic_threads("learn")),
    ("both", None, automatic_threads("both")),
    ("collect", 3, 3),
])  # fmt: skip
def test_experiment_sets_threads_by_role(tmp_path, threads_unset, role, torch_threads, expected):
    torch.set_num_threads(4)  # e.g. torch's default on a bigger machine
    exp = _bandit_experiment(tmp_path, role=role, torch_threads=torch_threads)
    exp.start()
    try:
        assert torch.get_num_threads() == expected
        assert f"{expected} torch thread(s)" in exp.summary()
    finally:
        exp.close()


def test_torch_threads_is_checked(tmp_path):
    with pytest.raises(ValueError, match="torch_threads"):
        _bandit_experiment(tmp_path, torch_threads=0)


class ThreadsEnv(gym.Env):
    """One-step episodes that report the torch threads of the process the env runs in."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, True, False, {"log/threads": torch.get_num_threads()}


def test_async_env_workers_run_one_torch_thread(threads_unset):
    torch.set_num_threads(2)
    envs = make_vector_env(ThreadsEnv, 2, "async")
    try:
        envs.reset(seed=0)
        infos = envs.step(np.zeros((2, 1), np.int64))[-1]
        assert [ep.metrics["log/threads"] for ep in finished_episodes(infos)] == [1.0, 1.0]
    finally:
        close_envs(envs)
    assert torch.get_num_threads() == 2  # the main process keeps its own


def test_the_evaluate_command_takes_the_threads_of_a_run_that_collects(threads_unset, tmp_path):
    from amago_like import evaluate

    torch.set_num_threads(3)
    with pytest.raises(SystemExit):  # no such run: it stops after choosing its threads
        evaluate.main([str(tmp_path / "no_run")])
    assert torch.get_num_threads() == automatic_threads("both")
