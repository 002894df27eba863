"""Crashes in worker processes surface as errors naming the cause, never as hangs."""

import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
from helpers import process_gone

from amago_like import MetaBandit
from amago_like.data import RLDataset, make_dataloader
from amago_like.envs.vector import close_envs, make_vector_env


class CrashingBandit(MetaBandit):
    """Raises from step() on its third pull."""

    def step(self, action):
        if self._pull == 2:
            raise RuntimeError("simulator exploded at pull 3")
        return super().step(action)


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium also prints the worker error
@pytest.mark.parametrize("per_worker", [1, 2])
def test_async_env_worker_crash_is_reported_with_its_error(per_worker):
    envs = make_vector_env(CrashingBandit, 2, mode="async", envs_per_worker=per_worker)
    try:
        envs.reset(seed=0)
        envs.step(np.zeros(2, dtype=np.int64))
        envs.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(RuntimeError, match="simulator exploded at pull 3"):
            envs.step(np.zeros(2, dtype=np.int64))
    finally:
        envs.close(terminate=True)


class UnbuildableBandit(MetaBandit):
    def __init__(self):
        raise OSError("no licence for the simulator")


def test_grouped_async_env_that_cannot_be_built_reports_why():
    with pytest.raises(OSError, match="no licence for the simulator"):
        make_vector_env(UnbuildableBandit, 4, mode="async", envs_per_worker=2)


class SlowBandit(MetaBandit):
    def step(self, action):
        time.sleep(3)
        return super().step(action)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("during_step", [False, True])
@pytest.mark.parametrize("per_worker", [1, 2])
def test_closing_async_envs_after_ctrl_c_stops_the_workers_without_error(during_step, per_worker):
    # Ctrl-C goes to the whole process group, so the workers stop before the main process closes them
    envs = make_vector_env(SlowBandit, 2, mode="async", envs_per_worker=per_worker)
    envs.reset(seed=0)
    if during_step:
        envs.step_async(np.zeros(2, dtype=np.int64))
        time.sleep(0.5)  # the workers are inside step() when the interrupt comes
    for p in envs.processes:
        os.kill(p.pid, signal.SIGINT)
        p.join(timeout=10)
    # a plain close() raises here: BrokenPipeError from idle workers, their KeyboardInterrupt from busy ones
    close_envs(envs)
    assert envs.closed and not any(p.is_alive() for p in envs.processes)


class BrokenDataset(RLDataset):
    @property
    def save_new_trajs_to(self):
        return None

    def sample_random_trajectory(self, rng):
        raise ValueError("the relabeling hook divided by zero")


def test_dataloader_worker_crash_is_reported_with_its_error():
    loader = make_dataloader(BrokenDataset(), seq_len=4, batch_size=2, batches=2, workers=2)
    with pytest.raises(ValueError, match="the relabeling hook divided by zero"):
        next(iter(loader))


def test_env_with_unsupported_observation_space_fails_clearly():
    class TextEnv(gym.Env):
        observation_space = gym.spaces.Text(8)
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(TypeError, match="needs Box observations"):
        make_vector_env(TextEnv, 1, mode="sync")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_grouped_async_workers_stop_when_the_main_process_is_killed():
    script = (
        "import sys, time\n"
        "from amago_like import MetaBandit\n"
        "from amago_like.envs.vector import make_vector_env\n"
        "envs = make_vector_env(MetaBandit, 4, 'async', envs_per_worker=2)\n"
        "envs.reset(seed=0)\n"
        "print(*[p.pid for p in envs.processes], flush=True)\n"
        "time.sleep(60)\n"
    )
    main = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in main.stdout.readline().split()]
        assert len(workers) == 2 and not any(process_gone(p) for p in workers)
        main.kill()  # SIGKILL: no close(), no atexit
        main.wait()
        deadline = time.time() + 20
        while time.time() < deadline and not all(process_gone(p) for p in workers):
            time.sleep(0.1)
        assert all(process_gone(p) for p in workers), "env workers outlived their killed main process"
    finally:
        main.kill()
