"""Tests for amago_like.envs.wrapper (AMAGOEnv) and amago_like.envs.vector (vectorised copies)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from unittest import mock

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amago_like.data.trajectory import FORMATS, Trajectory, load_trajectory
from amago_like.envs import wrapper as wrapper_module
from amago_like.envs.builtin.bandit import MetaBandit
from amago_like.envs.vector import LeanSyncVectorEnv, finished_episodes, make_vector_env, resolve_envs_per_worker
from amago_like.envs.worker_groups import GroupedAsyncVectorEnv, group_sizes
from amago_like.envs.wrapper import RL2_KEY, TIME_KEY, AMAGOEnv, EpisodeStats, split_timestep
from amago_like.threads import usable_cpus

# --------------------------------------------------------------------------- #
# toy environments
# --------------------------------------------------------------------------- #


def stack_obs(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of vector-env observations (the env may reuse its buffers)."""
    return {k: np.array(v) for k, v in obs.items()}


class ScriptedEnv(gym.Env):
    """Deterministic toy env that records every action it receives.

    Observation at step t: each Box key filled with ``t + offset``. Reward at step t is ``0.5 * t``.
    The episode ends after ``length`` steps, terminated or truncated. ``bad`` = (kind, step) makes the
    observation at that step NaN ("nan"), wrongly shaped ("shape") or the reward infinite ("reward").
    """

    def __init__(self, observation_space=None, action_space=None, length=4, terminate=True, bad=None):
        self.observation_space = observation_space or gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = action_space or gym.spaces.Box(0.0, 10.0, (1,), np.float32)
        self.length, self.terminate, self.bad = length, terminate, bad
        self.received, self.episodes, self.t = [], 0, 0

    def _obs(self):
        bad = self.bad is not None and self.bad[1] == self.t

        def fill(space, offset):
            shape = (space.shape[0] + 1, *space.shape[1:]) if bad and self.bad[0] == "shape" else space.shape
            x = np.full(shape, self.t + offset, dtype=space.dtype)
            if bad and self.bad[0] == "nan":
                x[..., 0] = np.nan
            return x

        if isinstance(self.observation_space, gym.spaces.Dict):
            return {k: fill(s, 0.25 * i) for i, (k, s) in enumerate(self.observation_space.spaces.items())}
        return fill(self.observation_space, 0.25)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episodes = 0, self.episodes + 1
        return self._obs(), {"log/ignored_at_reset": 1.0}

    def step(self, action):
        self.received.append(np.array(action, copy=True))
        self.t += 1
        reward = 0.5 * self.t
        if self.bad is not None and self.bad == ("reward", self.t):
            reward = float("inf")
        info = {"log/step": self.t, "not_a_metric": 123.0}
        if self.t == 1:
            info["log/first_only"] = 7.0
        if self.episodes == 1:
            info["log/episode_one_only"] = 1.0
        done = self.t >= self.length
        return self._obs(), reward, done and self.terminate, done and not self.terminate, info


class VarBandit(MetaBandit):
    """A MetaBandit whose meta-episode length (1-3 pulls) is drawn at reset, and whose name carries the pid."""

    def __init__(self):
        super().__init__(n_arms=3, k_episodes=3)
        self.env_name = f"bandit-pid{os.getpid()}"

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.k = int(self.np_random.integers(1, 4))
        return obs, info


def run_episode(env: AMAGOEnv, actions, seed=0):
    """Reset then step through ``actions`` until the episode ends; returns observations, rewards, infos."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos, flags = [obs], [], [info], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        rewards.append(r)
        infos.append(info)
        flags.append((term, trunc))
        if term or trunc:
            break
    return observations, rewards, infos, flags


def check_timesteps(observations, actions, rewards, action_dim, obs_keys=("observation",)):
    """Keys, dtypes, shapes, the time index and [prev reward, prev action] of every wrapped observation."""
    for t, obs in enumerate(observations):
        assert set(obs) == {*obs_keys, RL2_KEY, TIME_KEY}
        assert obs[TIME_KEY].dtype == np.int64 and obs[TIME_KEY].shape == (1,)
        assert obs[TIME_KEY][0] == t
        assert obs[RL2_KEY].dtype == np.float32 and obs[RL2_KEY].shape == (1 + action_dim,)
        if t == 0:
            np.testing.assert_array_equal(obs[RL2_KEY], np.zeros(1 + action_dim))
        else:
            assert obs[RL2_KEY][0] == np.float32(rewards[t - 1])
            np.testing.assert_array_equal(obs[RL2_KEY][1:], actions[t - 1])


def one_hot(a, n):
    return np.eye(n, dtype=np.float32)[a]


# --------------------------------------------------------------------------- #
# timesteps
# --------------------------------------------------------------------------- #


def test_box_env_timesteps_and_rescaling():
    low, high = np.array([0.0, -5.0], np.float32), np.array([10.0, 5.0], np.float32)
    inner = ScriptedEnv(action_space=gym.spaces.Box(low, high, dtype=np.float32))
    env = AMAGOEnv(inner, env_name="scripted")
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    assert set(env.observation_space.spaces) == {"observation", RL2_KEY, TIME_KEY}
    assert env.observation_space[RL2_KEY].shape == (3,)
    actions = [np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([0.0, 0.5]), np.array([3.0, -7.0])]
    observations, rewards, _, flags = run_episode(env, actions)
    assert flags[-1] == (True, False) and len(observations) == 5
    stored = [np.clip(a, -1, 1).astype(np.float32) for a in actions]
    check_timesteps(observations, stored, rewards, 2)
    expected_env_actions = [[0.0, -5.0], [10.0, 5.0], [5.0, 2.5], [10.0, -5.0]]
    for got, want in zip(inner.received, expected_env_actions):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6)
    for t, obs in enumerate(observations):
        assert obs["observation"].dtype == np.float32 and obs["observation"].shape == (3,)
        np.testing.assert_array_equal(obs["observation"], np.full(3, t + 0.25))


def test_unbounded_box_actions_pass_through_clipped():
    inner = ScriptedEnv(action_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float64))
    env = AMAGOEnv(inner)
    env.reset(seed=0)
    env.step([0.3, -4.0])
    assert inner.received[0].dtype == np.float64
    np.testing.assert_allclose(inner.received[0], [0.3, -1.0], atol=1e-6)


def test_pendulum_box_obs_and_actions():
    env = AMAGOEnv(gym.make("Pendulum-v1", max_episode_steps=5))
    assert env.env_name == "PendulumEnv"
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 1).astype(np.float32) for _ in range(5)]
    obs, _ = env.reset(seed=3)
    observations, rewards = [obs], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        # Pendulum's torque bound is 2: action a in [-1, 1] must arrive as 2a
        np.testing.assert_allclose(env.unwrapped.last_u, 2.0 * a[0], rtol=1e-5)
        observations.append(obs)
        rewards.append(r)
    assert not term and trunc
    check_timesteps(observations, actions, rewards, 1)
    assert all(o["observation"].shape == (3,) and o["observation"].dtype == np.float32 for o in observations)
    stats = info["episode_stats"]
    assert stats.length == 5 and stats.ret == pytest.approx(sum(rewards))


@pytest.mark.parametrize("as_type", [int, np.int64, lambda a: np.array([a])], ids=["int", "np.int64", "array"])
def test_cartpole_discrete_one_hot(tmp_path, as_type):
    env = AMAGOEnv(gym.make("CartPole-v1"))
    env.configure_saving(str(tmp_path), "npz")
    assert env.action_space == gym.spaces.Discrete(2)
    assert env.observation_space[RL2_KEY].shape == (3,)
    rng = np.random.default_rng(1)
    acts = rng.integers(0, 2, 500)
    observations, rewards, infos, flags = run_episode(env, [as_type(a) for a in acts], seed=1)
    n = len(rewards)
    assert flags[-1] == (True, False), "random CartPole terminates well before 500 steps"
    check_timesteps(observations, [one_hot(a, 2) for a in acts[:n]], rewards, 2)
    assert all(o["observation"].shape == (4,) for o in observations)
    (path,) = [os.path.join(tmp_path, f) for f in os.listdir(tmp_path)]
    traj = load_trajectory(path)
    np.testing.assert_array_equal(traj.actions, one_hot(acts[:n], 2))
    assert traj.dones[-1, 0] and not traj.dones[:-1].any()
    assert infos[-1]["episode_stats"] == EpisodeStats("CartPoleEnv", float(n), n, {})


def test_bandit_one_hot_rl2s_and_stats():
    env = AMAGOEnv(MetaBandit(n_arms=4, k_episodes=5))
    assert env.env_name == "bandit-4arms"
    acts = [0, 1, 2, 3, 1]
    observations, rewards, infos, flags = run_episode(env, acts, seed=7)
    assert len(rewards) == 5 and flags[-1] == (True, False)
    check_timesteps(observations, [one_hot(a, 4) for a in acts], rewards, 4)
    assert sum(rewards) in (1.0, 2.0), "the winning arm pays exactly once or twice over this sweep"
    stats = infos[-1]["episode_stats"]
    assert stats.env_name == "bandit-4arms" and stats.length == 5 and stats.ret == sum(rewards)
    assert stats.metrics == {f"log/Episode {i + 1} Return": rewards[i] for i in range(5)}
    assert all("episode_stats" not in info for info in infos[:-1])


def test_discrete_action_out_of_range():
    env = AMAGOEnv(MetaBandit(n_arms=3))
    env.reset(seed=0)
    for bad in (3, -1):
        with pytest.raises(ValueError, match="outside"):
            env.step(bad)


def test_dict_observations():
    space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-1, 1, (2,), np.float32),
            "grid": gym.spaces.Box(0, 255, (2, 3), np.uint8),
        }
    )
    env = AMAGOEnv(ScriptedEnv(observation_space=space, length=3))
    assert set(env.observation_space.spaces) == {"pos", "grid", RL2_KEY, TIME_KEY}
    observations, rewards, _, _ = run_episode(env, [[0.0]] * 3)
    check_timesteps(observations, [np.zeros(1)] * 3, rewards, 1, obs_keys=("pos", "grid"))
    for t, obs in enumerate(observations):
        assert obs["pos"].dtype == np.float32 and obs["pos"].shape == (2,)
        assert obs["grid"].dtype == np.uint8 and obs["grid"].shape == (2, 3)
        assert (obs["grid"] == t).all()  # t + 0.25 cast to uint8
        env_obs, rl2s, time_idx = split_timestep(obs)
        assert set(env_obs) == {"pos", "grid"} and time_idx[0] == t and rl2s.shape == (2,)


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("key", [RL2_KEY, TIME_KEY])
def test_reserved_observation_keys(key):
    space = gym.spaces.Dict({"x": gym.spaces.Box(0, 1, (1,)), key: gym.spaces.Box(0, 1, (1,))})
    with pytest.raises(ValueError, match="reserved"):
        AMAGOEnv(ScriptedEnv(observation_space=space))


@pytest.mark.parametrize(
    "space,name",
    [
        (gym.spaces.Discrete(4), "'observation'"),
        (gym.spaces.Dict({"ok": gym.spaces.Box(0, 1, (1,)), "cell": gym.spaces.MultiBinary(3)}), "'cell'"),
        (gym.spaces.Tuple([gym.spaces.Box(0, 1, (1,))]), "'observation'"),
    ],
    ids=["discrete", "dict-with-multibinary", "tuple"],
)
def test_non_box_observations_rejected(space, name):
    with pytest.raises(TypeError, match="Box observations") as info:
        AMAGOEnv(ScriptedEnv(observation_space=space))
    assert name in str(info.value)


@pytest.mark.parametrize(
    "space",
    [gym.spaces.MultiDiscrete([2, 3]), gym.spaces.Box(-1, 1, (2, 2)), gym.spaces.MultiBinary(2)],
    ids=["multidiscrete", "2d-box", "multibinary"],
)
def test_unsupported_action_spaces_rejected(space):
    with pytest.raises(TypeError, match="action space"):
        AMAGOEnv(ScriptedEnv(action_space=space))


@pytest.mark.parametrize("step", [0, 2], ids=["at-reset", "at-step-2"])
@pytest.mark.parametrize("kind,match", [("nan", "NaN"), ("shape", "shape")])
def test_bad_observations_raise_value_error(kind, match, step):
    env = AMAGOEnv(ScriptedEnv(bad=(kind, step)), env_name="broken-env")
    with pytest.raises(ValueError, match=match) as info:
        run_episode(env, [[0.0]] * 4)
    assert "broken-env" in str(info.value) and "'observation'" in str(info.value)


class FloatObsEnv(ScriptedEnv):
    """Declares uint8 observations but returns floats with a NaN (an env bug the wrapper should report)."""

    def _obs(self):
        return np.array([np.nan, 1.0, 2.0])


def test_nan_in_integer_box_observation_raises():
    env = AMAGOEnv(FloatObsEnv(observation_space=gym.spaces.Box(0, 255, (3,), np.uint8)))
    with pytest.raises(ValueError, match="NaN"):
        env.reset()


def test_bad_dict_observation_names_the_key():
    space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,)), "b": gym.spaces.Box(-1, 1, (2,))})
    env = AMAGOEnv(ScriptedEnv(observation_space=space, bad=("nan", 1)))
    env.reset()
    with pytest.raises(ValueError, match=r"observation 'a' contains NaN"):
        env.step([0.0])


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_observation_values_raise_and_huge_finite_ones_do_not(value, dtype):
    space = gym.spaces.Box(-np.inf, np.inf, (2, 3), dtype)
    env = AMAGOEnv(ScriptedEnv(observation_space=space))
    env.reset()
    huge = np.full((2, 3), np.finfo(dtype).max, dtype)  # sums overflow; the check must not
    env.recorder.step(huge, np.zeros(1, np.float32), 0.0, False, False, {})
    bad = huge.copy()
    bad[1, 2] = value
    with pytest.raises(ValueError, match="NaN or inf"):
        env.recorder.step(bad, np.zeros(1, np.float32), 0.0, False, False, {})


def test_infinite_reward_raises_value_error():
    env = AMAGOEnv(ScriptedEnv(bad=("reward", 2)))
    with pytest.raises(ValueError, match="reward"):
        run_episode(env, [[0.0]] * 4)


# --------------------------------------------------------------------------- #
# saving and episode stats
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("terminate", [True, False], ids=["terminated", "truncated"])
def test_saved_trajectory_equals_steps(tmp_path, fmt, terminate):
    space = gym.spaces.Dict({"a": gym.spaces.Box(-9, 9, (2,), np.float32), "b": gym.spaces.Box(0, 9, (1,), np.int64)})
    env = AMAGOEnv(ScriptedEnv(observation_space=space, length=4, terminate=terminate), env_name="toy env")
    env.configure_saving(str(tmp_path / "new"), fmt)
    actions = [[-1.0], [0.5], [2.0], [0.0]]
    observations, rewards, _, flags = run_episode(env, actions)
    assert flags[-1] == (terminate, not terminate)
    files = os.listdir(tmp_path / "new")
    assert len(files) == 1 and files[0].endswith(".traj" if fmt == "traj" else ".npz") and "toy-env" in files[0]
    traj = load_trajectory(str(tmp_path / "new" / files[0]))
    assert len(traj) == 5
    for k in ("a", "b"):
        np.testing.assert_array_equal(traj.obs[k], np.stack([o[k] for o in observations]))
        assert traj.obs[k].dtype == space[k].dtype
    np.testing.assert_array_equal(traj.rl2s, np.stack([o[RL2_KEY] for o in observations]))
    np.testing.assert_array_equal(traj.time_idxs, np.stack([o[TIME_KEY] for o in observations]))
    np.testing.assert_array_equal(traj.actions, np.clip(np.array(actions, np.float32), -1, 1))
    np.testing.assert_array_equal(traj.rews[:, 0], np.array(rewards, np.float32))
    assert traj.dones.dtype == bool
    assert traj.dones[:-1].sum() == 0 and bool(traj.dones[-1, 0]) is terminate
    # a second episode makes a second file, with its own contents
    run_episode(env, [[1.0]] * 4)
    assert len(os.listdir(tmp_path / "new")) == 2


def test_no_saving_unless_configured(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("save_trajectory must not be called")

    monkeypatch.setattr(wrapper_module, "save_trajectory", fail)
    env = AMAGOEnv(ScriptedEnv(length=2))
    run_episode(env, [[0.0]] * 2)
    env.configure_saving(str(tmp_path), "traj")
    env.configure_saving(None)
    run_episode(env, [[0.0]] * 2)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="format"):
        env.configure_saving(str(tmp_path), "csv")


def test_trajectory_of_episode_so_far():
    env = AMAGOEnv(MetaBandit(n_arms=2, k_episodes=3))
    env.reset(seed=0)
    traj = env.trajectory()
    traj.validate()
    assert len(traj) == 1 and traj.actions.shape == (0, 2) and traj.rews.shape == (0, 1)
    env.step(1)
    traj = env.trajectory()
    traj.validate()
    assert len(traj) == 2 and not traj.dones.any()
    np.testing.assert_array_equal(traj.actions, [[0.0, 1.0]])


def test_episode_stats_metrics_last_value_within_episode():
    env = AMAGOEnv(ScriptedEnv(length=3), env_name="scripted")
    _, rewards, infos, _ = run_episode(env, [[0.0]] * 3)
    stats = infos[-1]["episode_stats"]
    assert isinstance(stats, EpisodeStats)
    assert stats.env_name == "scripted" and stats.length == 3 and stats.ret == pytest.approx(0.5 + 1.0 + 1.5)
    assert stats.metrics == {"log/step": 3.0, "log/first_only": 7.0, "log/episode_one_only": 1.0}
    # metrics from an earlier episode do not leak into the next one
    _, _, infos, _ = run_episode(env, [[0.0]] * 3)
    assert infos[-1]["episode_stats"].metrics == {"log/step": 3.0, "log/first_only": 7.0}


def test_env_name_preference():
    assert AMAGOEnv(ScriptedEnv()).env_name == "ScriptedEnv"
    assert AMAGOEnv(ScriptedEnv(), env_name="mine").env_name == "mine"
    assert AMAGOEnv(MetaBandit(n_arms=5), env_name="ignored").env_name == "bandit-5arms"


# --------------------------------------------------------------------------- #
# vector envs
# --------------------------------------------------------------------------- #

N_ENVS, N_STEPS = 4, 14


def roll_vector(env, seed=11, steps=N_STEPS, action_seed=0):
    """Step ``env`` with a fixed action sequence; returns per-step records and the finished EpisodeStats."""
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    records = [stack_obs(obs)]
    finished, expected = [], []
    ret, length = np.zeros(N_ENVS), np.zeros(N_ENVS, dtype=int)
    for _ in range(steps):
        actions = rng.integers(0, 3, N_ENVS)
        obs, rew, term, trunc, infos = env.step(actions)
        records.append((stack_obs(obs), rew.copy(), term.copy(), trunc.copy()))
        ret += rew
        length += 1
        stats = finished_episodes(infos)
        assert len(stats) == int((term | trunc).sum())
        done = np.flatnonzero(term | trunc)
        expected += [(float(ret[i]), int(length[i])) for i in done]
        finished += [(s.ret, s.length) for s in stats]
        for i in done:  # same-step autoreset: the returned observation starts the next episode
            assert obs[TIME_KEY][i, 0] == 0 and not obs[RL2_KEY][i].any()
            assert infos["final_obs"][i][TIME_KEY][0] == length[i]
        ret[done], length[done] = 0.0, 0
    assert finished == expected
    return records, finished


@pytest.mark.parametrize("mode, per_worker", [("sync", "auto"), ("async", 1), ("async", 2)])
def test_vector_env_finished_episodes_and_saving(tmp_path, mode, per_worker):
    env = make_vector_env(
        VarBandit, N_ENVS, mode, save_dir=str(tmp_path), save_format="npz", envs_per_worker=per_worker
    )
    try:
        _, finished = roll_vector(env)
    finally:
        env.close()
    assert len(finished) >= N_ENVS * N_STEPS // 3, "1-3 pull meta-episodes finish often"
    files = sorted(os.listdir(tmp_path))
    assert len(files) == len(finished)
    trajs = [load_trajectory(str(tmp_path / f)) for f in files]
    saved = Counter((float(t.rews.sum()), len(t) - 1) for t in trajs)
    assert saved == Counter(finished)
    assert all(t.dones[-1, 0] for t in trajs)
    pids = {f.split("_")[1] for f in files}
    if mode == "sync":
        assert pids == {f"bandit-pid{os.getpid()}"}
    else:  # each worker process wrote its own envs' episodes
        assert len(pids) == N_ENVS // per_worker and f"bandit-pid{os.getpid()}" not in pids


@pytest.mark.parametrize("per_worker", [1, 3])
def test_sync_and_async_agree(per_worker):
    results = {}
    for mode in ("sync", "async"):
        env = make_vector_env(VarBandit, N_ENVS, mode, envs_per_worker=per_worker if mode == "async" else "auto")
        try:
            results[mode] = roll_vector(env, seed=123)
        finally:
            env.close()
    (sync_records, sync_finished), (async_records, async_finished) = results["sync"], results["async"]
    assert sync_finished == async_finished
    for k in sync_records[0]:
        np.testing.assert_array_equal(sync_records[0][k], async_records[0][k])
    for (o1, r1, te1, tr1), (o2, r2, te2, tr2) in zip(sync_records[1:], async_records[1:]):
        assert set(o1) == set(o2) == {"observation", RL2_KEY, TIME_KEY}
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k])
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(te1, te2)
        np.testing.assert_array_equal(tr1, tr2)
    # a different seed gives a different stream (so the equality above is not vacuous)
    env = make_vector_env(VarBandit, N_ENVS, "sync")
    try:
        other_records, _ = roll_vector(env, seed=999)
    finally:
        env.close()
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(sync_records[1:], other_records[1:]))


def test_vector_env_wraps_once_and_rejects_bad_arguments(tmp_path):
    env = make_vector_env(lambda: AMAGOEnv(MetaBandit(), env_name="x"), 2, "sync", save_dir=str(tmp_path))
    try:
        assert all(type(e) is AMAGOEnv and type(e.env) is MetaBandit for e in env.envs)
    finally:
        env.close()
    with pytest.raises(ValueError, match="env_mode"):
        make_vector_env(MetaBandit, 2, "threads")
    with pytest.raises(ValueError):
        make_vector_env(MetaBandit, 0, "sync")
    assert finished_episodes({}) == []


def test_saved_vector_trajectories_are_valid_files(tmp_path):
    env = make_vector_env(lambda: MetaBandit(n_arms=2, k_episodes=2), 2, "sync", str(tmp_path), "traj")
    try:
        env.reset(seed=0)
        for _ in range(2):
            env.step(np.array([0, 1]))
    finally:
        env.close()
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.endswith(".traj") for f in files)
    for f in files:
        traj = load_trajectory(str(tmp_path / f))
        assert len(traj) == 3 and traj.actions.shape == (2, 2)
    with pytest.raises(FileNotFoundError):  # a missing file is not a corrupt one
        load_trajectory(str(tmp_path / "nothing.traj"))


# --------------------------------------------------------------------------- #
# splitting long episodes into several files
# --------------------------------------------------------------------------- #

TRAJ_FIELDS = ("rl2s", "time_idxs", "actions", "rews", "dones")


class CapturedSaves:
    """Replaces the wrapper's save_trajectory: keeps every saved segment in memory, in order."""

    def __init__(self):
        self.trajs: list[Trajectory] = []

    def __call__(self, traj, directory, env_name, fmt="npz"):
        traj.validate()
        self.trajs.append(traj)
        return os.path.join(directory, f"{len(self.trajs)}.npz")


def concat_segments(segments: list[Trajectory]) -> Trajectory:
    """Glue consecutive segments of one episode back together (each shares its first timestep with the
    previous segment's last one), checking that shared timestep on the way."""
    for a, b in zip(segments, segments[1:]):
        assert a.time_idxs[-1, 0] == b.time_idxs[0, 0]
        np.testing.assert_array_equal(a.rl2s[-1], b.rl2s[0])
        for k in a.obs:
            np.testing.assert_array_equal(a.obs[k][-1], b.obs[k][0])
    first, rest = segments[0], segments[1:]
    cat = lambda xs: np.concatenate(xs, axis=0)  # noqa: E731
    return Trajectory(
        obs={k: cat([first.obs[k]] + [s.obs[k][1:] for s in rest]) for k in first.obs},
        rl2s=cat([first.rl2s] + [s.rl2s[1:] for s in rest]),
        time_idxs=cat([first.time_idxs] + [s.time_idxs[1:] for s in rest]),
        actions=cat([s.actions for s in segments]),
        rews=cat([s.rews for s in segments]),
        dones=cat([s.dones for s in segments]),
    )


def assert_same_traj(a: Trajectory, b: Trajectory) -> None:
    assert a.obs.keys() == b.obs.keys()
    for name, x, y in [(f"obs[{k}]", a.obs[k], b.obs[k]) for k in a.obs] + [
        (f, getattr(a, f), getattr(b, f)) for f in TRAJ_FIELDS
    ]:
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)


DICT_SPACE = gym.spaces.Dict(
    {"a": gym.spaces.Box(-99, 99, (2,), np.float32), "b": gym.spaces.Box(0, 99, (1,), np.int64)}
)


def episode_segments(length, terminate, seed, **saving) -> tuple[list[Trajectory], EpisodeStats, list[dict]]:
    """One ScriptedEnv episode with random actions; returns its saved segments, its stats and its timesteps."""
    captured = CapturedSaves()
    env = AMAGOEnv(ScriptedEnv(observation_space=DICT_SPACE, length=length, terminate=terminate), env_name="toy")
    env.configure_saving(tempfile.gettempdir(), "npz", **saving)
    actions = np.random.default_rng(seed).uniform(-1, 1, (length, 1))
    with mock.patch.object(wrapper_module, "save_trajectory", captured):
        observations, _, infos, _ = run_episode(env, actions, seed=seed)
    return captured.trajs, infos[-1]["episode_stats"], observations


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 25),
    save_every=st.integers(1, 8),
    stagger=st.booleans(),
    terminate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_split_segments_concatenate_to_the_unsplit_episode(length, save_every, stagger, terminate, seed):
    (whole,), stats, observations = episode_segments(length, terminate, seed)
    segments, split_stats, split_obs = episode_segments(length, terminate, seed, save_every=save_every, stagger=stagger)
    assert split_stats == stats, "metrics and EpisodeStats do not depend on file splitting"
    for o1, o2 in zip(observations, split_obs):  # the timesteps the agent sees are unchanged too
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k])
    assert_same_traj(concat_segments(segments), whole)
    lengths = [len(s) - 1 for s in segments]
    assert all(1 <= n <= save_every for n in lengths)
    if not stagger:
        assert lengths[0] == min(save_every, length)
    assert all(n == save_every for n in lengths[1:-1]), "only the first (staggered) and last segments are short"
    for s in segments[:-1]:
        assert not s.dones.any(), "a mid-episode segment never ends in a terminal"
    assert segments[-1].dones[-1, 0] == terminate
    if len(segments) > 1:  # a segment that starts mid-episode keeps the real previous reward and action
        assert segments[1].time_idxs[0, 0] > 0 and segments[1].rl2s[0, 0] > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_split_episode_files_on_disk(tmp_path, fmt):
    env = AMAGOEnv(ScriptedEnv(observation_space=DICT_SPACE, length=9, terminate=True), env_name="toy")
    env.configure_saving(str(tmp_path), fmt, save_every=3)
    observations, rewards, infos, _ = run_episode(env, [[0.5]] * 9)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 3, "9 transitions in files of 3: no empty file at the end"
    segments = [load_trajectory(str(tmp_path / f)) for f in files]
    assert [s.time_idxs[0, 0] for s in segments] == [0, 3, 6]
    traj = concat_segments(segments)
    np.testing.assert_array_equal(traj.time_idxs, np.stack([o[TIME_KEY] for o in observations]))
    np.testing.assert_array_equal(traj.rl2s, np.stack([o[RL2_KEY] for o in observations]))
    np.testing.assert_array_equal(traj.rews[:, 0], np.array(rewards, np.float32))
    assert [bool(s.dones[-1, 0]) for s in segments] == [False, False, True]
    assert infos[-1]["episode_stats"].length == 9 and infos[-1]["episode_stats"].ret == pytest.approx(sum(rewards))
    assert env.trajectory().time_idxs[0, 0] == 6, "trajectory() is the segment since the last cut"


def first_segment_lengths(seed, episodes=25, save_every=5, stagger=True) -> list[int]:
    captured = CapturedSaves()
    env = AMAGOEnv(ScriptedEnv(length=12))
    env.configure_saving(tempfile.gettempdir(), "npz", save_every=save_every, stagger=stagger)
    with mock.patch.object(wrapper_module, "save_trajectory", captured):
        for ep in range(episodes):
            run_episode(env, [[0.0]] * 12, seed=seed if ep == 0 else None)
    return [len(t) - 1 for t in captured.trajs if t.time_idxs[0, 0] == 0]


def test_stagger_draws_varied_reproducible_first_lengths():
    lengths = first_segment_lengths(seed=3)
    assert len(lengths) == 25 and all(1 <= n <= 5 for n in lengths)
    assert len(set(lengths)) >= 3, "staggered first segments should differ between episodes"
    assert first_segment_lengths(seed=3) == lengths, "the draws follow the env's reset seed"
    assert first_segment_lengths(seed=4) != lengths
    assert set(first_segment_lengths(seed=3, stagger=False)) == {5}


def test_configure_saving_rejects_bad_split_options(tmp_path):
    env = AMAGOEnv(ScriptedEnv())
    with pytest.raises(ValueError, match="save_every"):
        env.configure_saving(str(tmp_path), "npz", save_every=0)
    with pytest.raises(ValueError, match="save_every"):
        env.configure_saving(str(tmp_path), "npz", stagger=True)


def assert_same_infos(a: dict, b: dict, path: str = "infos") -> None:
    """Batched vector-env infos hold the same keys, dtypes and values (final_obs: per-env timestep dicts)."""
    assert a.keys() == b.keys(), path
    for k in a:
        x, y, where = a[k], b[k], f"{path}[{k!r}]"
        if isinstance(x, dict):
            assert_same_infos(x, y, where)
        elif k == "final_obs":
            assert x.dtype == y.dtype == object and len(x) == len(y), where
            for ox, oy in zip(x, y):
                assert (ox is None) == (oy is None), where
                if ox is not None:
                    assert ox.keys() == oy.keys(), where
                    for key in ox:
                        assert ox[key].dtype == oy[key].dtype, where
                        np.testing.assert_array_equal(ox[key], oy[key], err_msg=where)
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, where
            assert list(x) == list(y), where  # also compares the EpisodeStats objects in object arrays


def scripted_factories(obs_space=None) -> list:
    """Sub-envs whose episodes differ in length and kind of ending, with Box actions in [0, 10]."""
    return [
        lambda length=length, terminate=terminate: AMAGOEnv(
            ScriptedEnv(observation_space=obs_space, length=length, terminate=terminate), env_name=f"s{length}"
        )
        for length, terminate in ((2, True), (3, False), (5, True))
    ]


@pytest.mark.parametrize("obs_space", [None, DICT_SPACE], ids=["box", "dict"])
def test_lean_sync_vector_env_matches_gymnasium_sync(obs_space):
    """make_vector_env's sync mode returns exactly what gymnasium's SyncVectorEnv (same-step) returns,
    infos included, and every step's observations are new arrays (no buffer shared between steps)."""
    lean = LeanSyncVectorEnv(scripted_factories(obs_space))
    ref = gym.vector.SyncVectorEnv(scripted_factories(obs_space), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    assert lean.single_observation_space == ref.single_observation_space
    assert lean.observation_space == ref.observation_space and lean.action_space == ref.action_space
    assert lean.num_envs == 3 and lean.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (12, 3, 1)).astype(np.float32)
    try:
        (_, i1), (_, i2) = lean.reset(seed=3), ref.reset(seed=3)
        assert_same_infos(i1, i2)
        kept, copies, finished = [], [], 0
        for a in actions:
            out, want = lean.step(a), ref.step(a)
            obs, (rew, term, trunc), infos = out[0], out[1:4], out[4]
            assert obs.keys() == want[0].keys()
            for k in obs:
                assert obs[k].dtype == want[0][k].dtype
                np.testing.assert_array_equal(obs[k], want[0][k])
            for x, y in zip((rew, term, trunc), want[1:4]):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
            assert_same_infos(infos, want[4])
            finished += len(finished_episodes(infos))
            kept.append(obs)
            copies.append(stack_obs(obs))
        assert finished == 12 // 2 + 12 // 3 + 12 // 5
        for obs, copy in zip(kept, copies):  # later steps left earlier results alone
            for k in obs:
                np.testing.assert_array_equal(obs[k], copy[k])
        assert lean.call("spec") == ref.call("spec") and lean.get_attr("env_name") == ("s2", "s3", "s5")
    finally:
        lean.close()
        ref.close()


@pytest.mark.parametrize("per_worker", [1, 2, 3])
def test_grouped_async_vector_env_matches_lean_sync(per_worker):
    """Workers of several envs return exactly what one LeanSyncVectorEnv of the same envs returns, infos and
    their masks included (groups of unequal size too), and pass call / get_attr / set_attr to the right env."""
    grouped = GroupedAsyncVectorEnv(scripted_factories(DICT_SPACE), per_worker)
    lean = LeanSyncVectorEnv(scripted_factories(DICT_SPACE))
    try:
        assert len(grouped.processes) == -(-3 // per_worker) and grouped.num_envs == 3
        assert grouped.single_observation_space == lean.single_observation_space
        assert grouped.observation_space == lean.observation_space and grouped.action_space == lean.action_space
        assert grouped.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
        (o1, i1), (o2, i2) = grouped.reset(seed=3), lean.reset(seed=3)
        assert_same_infos(i1, i2)
        for k in o2:
            np.testing.assert_array_equal(o1[k], o2[k])
        finished = 0
        for a in np.random.default_rng(0).uniform(0, 10, (12, 3, 1)).astype(np.float32):
            out, want = grouped.step(a), lean.step(a)
            for k in want[0]:
                assert out[0][k].dtype == want[0][k].dtype
                np.testing.assert_array_equal(out[0][k], want[0][k])
            for x, y in zip(out[1:4], want[1:4]):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
            assert_same_infos(out[4], want[4])
            finished += len(finished_episodes(out[4]))
        assert finished == 12 // 2 + 12 // 3 + 12 // 5
        assert grouped.get_attr("env_name") == ("s2", "s3", "s5") and grouped.call("spec") == lean.call("spec")
        grouped.set_attr("tag", ["a", "b", "c"])
        assert grouped.get_attr("tag") == ("a", "b", "c")
        with pytest.raises(ValueError, match="3 envs"):
            grouped.step(np.zeros((2, 1), np.float32))
    finally:
        grouped.close()
        lean.close()
    assert not any(p.is_alive() for p in grouped.processes)


def test_envs_per_worker_is_checked():
    with pytest.raises(ValueError, match="'auto' or an integer >= 1"):
        make_vector_env(MetaBandit, 2, "async", envs_per_worker=0)
    with pytest.raises(ValueError, match="only env_mode 'async'"):
        make_vector_env(MetaBandit, 2, "sync", envs_per_worker=2)
    with pytest.raises(ValueError, match="observation space"):  # workers whose envs disagree
        GroupedAsyncVectorEnv([lambda: AMAGOEnv(MetaBandit(n_arms=2)), lambda: AMAGOEnv(MetaBandit(n_arms=3))], 1)
    assert resolve_envs_per_worker(5, 100) == 5 and resolve_envs_per_worker("auto", 1) == 1
    assert resolve_envs_per_worker("auto", 10 * usable_cpus()) == 10
    with mock.patch.dict(os.environ, {"LOCAL_WORLD_SIZE": str(usable_cpus())}):  # DDP processes share the CPUs
        assert resolve_envs_per_worker("auto", 10) == 10
    assert group_sizes(10, 4) == [4, 3, 3] and group_sizes(3, 1) == [1, 1, 1] and group_sizes(2, 5) == [2]


def test_make_vector_env_sync_is_lean():
    env = make_vector_env(MetaBandit, 2, "sync")
    try:
        assert type(env) is LeanSyncVectorEnv and isinstance(env, gym.vector.SyncVectorEnv)
        env.reset(seed=0)
        with pytest.raises(ValueError, match="2 envs"):
            env.step(np.zeros(3, np.int64))
    finally:
        env.close()


# --------------------------------------------------------------------------- #
# env_mode="already_vectorized"
# --------------------------------------------------------------------------- #


class LongVarBandit(MetaBandit):
    """A MetaBandit whose meta-episode length (1-7 pulls) is drawn at reset."""

    def __init__(self):
        super().__init__(n_arms=3, k_episodes=7)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.k = int(self.np_random.integers(1, 8))
        return obs, info


def saved_contents(folder) -> list[tuple]:
    """Every saved trajectory as a comparable tuple of bytes, sorted (file names differ between runs)."""
    out = []
    for f in os.listdir(folder):
        t = load_trajectory(os.path.join(folder, f))
        out.append(
            (
                f.split("_")[1],
                *(t.obs[k].tobytes() for k in sorted(t.obs)),
                *(getattr(t, a).tobytes() for a in TRAJ_FIELDS),
            )
        )
    return sorted(out)


@pytest.mark.parametrize("inner_mode", [gym.vector.AutoresetMode.SAME_STEP, gym.vector.AutoresetMode.DISABLED])
def test_already_vectorized_matches_sync(tmp_path, inner_mode):
    results = {}
    makers = {
        "sync": LongVarBandit,
        "already_vectorized": lambda: gym.vector.SyncVectorEnv([LongVarBandit] * N_ENVS, autoreset_mode=inner_mode),
    }
    for mode, make in makers.items():
        env = make_vector_env(make, N_ENVS, mode, str(tmp_path / mode), "npz", save_every=3, stagger=True)
        try:
            assert env.single_observation_space == gym.spaces.Dict(
                {
                    "observation": gym.spaces.Box(0.0, 1.0, (1,), np.float32),
                    RL2_KEY: gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                    TIME_KEY: gym.spaces.Box(0, np.iinfo(np.int64).max, (1,), np.int64),
                }
            )
            assert env.single_action_space == gym.spaces.Discrete(3)
            results[mode] = roll_vector(env, seed=21, steps=30)
        finally:
            env.close()
    (sync_records, sync_finished), (vec_records, vec_finished) = results["sync"], results["already_vectorized"]
    assert sync_finished == vec_finished and len(sync_finished) >= 10
    for k in sync_records[0]:
        np.testing.assert_array_equal(sync_records[0][k], vec_records[0][k])
    for (o1, r1, te1, tr1), (o2, r2, te2, tr2) in zip(sync_records[1:], vec_records[1:]):
        assert o1.keys() == o2.keys()
        for k in o1:
            assert o1[k].dtype == o2[k].dtype
            np.testing.assert_array_equal(o1[k], o2[k])
        for x, y in ((r1, r2), (te1, te2), (tr1, tr2)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    sync_files, vec_files = saved_contents(tmp_path / "sync"), saved_contents(tmp_path / "already_vectorized")
    assert len(sync_files) > len(sync_finished), "long episodes were split into several files"
    assert sync_files == vec_files


class BatchedWalk(gym.vector.VectorEnv):
    """A natively batched env (no sub-env objects): K walkers on a line, episode i ends after 2 + i % 3 steps.

    Observation (K, 2) = [position, steps]; Box action in [0, 4] is added to the position; reward = action.
    Resets finished walkers in the same step.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, num_envs=3):
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.single_action_space = gym.spaces.Box(0.0, 4.0, (1,), np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.env_name = [f"walker{i}" for i in range(num_envs)]
        self.received = []

    def _obs(self):
        return np.stack([self.pos, self.steps], axis=1).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        self.pos, self.steps = np.zeros(self.num_envs), np.zeros(self.num_envs)
        return self._obs(), {}

    def step(self, actions):
        self.received.append(np.array(actions))
        self.pos += actions[:, 0]
        self.steps += 1
        done = self.steps >= 2 + np.arange(self.num_envs) % 3
        infos = {}
        if done.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final_obs[i] = self._obs()[i]
            infos = {"final_obs": final_obs, "_final_obs": done.copy()}
            infos["final_info"] = {"log/pos": self.pos.copy(), "_log/pos": done.copy()}
            self.pos[done], self.steps[done] = 0.0, 0.0
        return self._obs(), actions[:, 0].astype(np.float64), done, np.zeros_like(done), infos


def test_already_vectorized_natively_batched_env(tmp_path):
    inner = BatchedWalk(3)
    env = make_vector_env(lambda: inner, 3, "already_vectorized", str(tmp_path), "traj")
    assert env.single_action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs["observation"].shape == (3, 2) and obs[RL2_KEY].shape == (3, 2) and obs[TIME_KEY].shape == (3, 1)
    finished = []
    for _ in range(4):
        obs, rew, term, trunc, infos = env.step(np.full((3, 1), 0.5, np.float32))  # -> 3.0 in [0, 4]
        finished += finished_episodes(infos)
    np.testing.assert_allclose(np.concatenate(inner.received), 3.0)
    np.testing.assert_array_equal(rew, [3.0, 3.0, 3.0])
    # after 4 steps walkers 0 and 2 have just restarted; walker 1 is one step into its second episode
    np.testing.assert_allclose(obs[RL2_KEY], [[0.0, 0.0], [3.0, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(obs[TIME_KEY][:, 0], [0, 1, 0])
    assert infos["final_obs"][2][TIME_KEY][0] == 4 and infos["final_obs"][1] is None
    assert [(s.env_name, s.length, s.ret, s.metrics) for s in finished] == [
        ("walker0", 2, 6.0, {"log/pos": 6.0}),
        ("walker1", 3, 9.0, {"log/pos": 9.0}),
        ("walker0", 2, 6.0, {"log/pos": 6.0}),
        ("walker2", 4, 12.0, {"log/pos": 12.0}),
    ]
    trajs = [load_trajectory(str(tmp_path / f)) for f in sorted(os.listdir(tmp_path))]
    assert sorted(len(t) - 1 for t in trajs) == [2, 2, 3, 4] and all(t.dones[-1, 0] for t in trajs)
    assert all(t.obs["observation"][-1, 0] == 3.0 * (len(t) - 1) for t in trajs)


def test_already_vectorized_rejects_bad_envs():
    with pytest.raises(ValueError, match="2 envs.*3 were asked"):
        make_vector_env(lambda: gym.vector.SyncVectorEnv([MetaBandit] * 2), 3, "already_vectorized")
    with pytest.raises(TypeError, match="VectorEnv"):
        make_vector_env(MetaBandit, 1, "already_vectorized")
    with pytest.raises(ValueError, match="autoreset_mode"):  # gymnasium's default resets one step late
        make_vector_env(lambda: gym.vector.SyncVectorEnv([MetaBandit] * 2), 2, "already_vectorized")
    with pytest.raises(TypeError, match="Box observations"):
        bad = lambda: gym.spaces.Discrete(2)  # noqa: E731
        env = gym.vector.SyncVectorEnv(
            [lambda: ScriptedEnv(observation_space=bad())], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
        )
        make_vector_env(lambda: env, 1, "already_vectorized")
