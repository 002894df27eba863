"""Tests for amago_like.envs.wrapper (AMAGOEnv) and amago_like.envs.vector (vectorised copies)."""

from __future__ import annotations

import os
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

from amago_like.data.trajectory import FORMATS, load_trajectory
from amago_like.envs import wrapper as wrapper_module
from amago_like.envs.builtin.bandit import MetaBandit
from amago_like.envs.vector import finished_episodes, make_vector_env, stack_obs
from amago_like.envs.wrapper import RL2_KEY, TIME_KEY, AMAGOEnv, EpisodeStats, split_timestep

# --------------------------------------------------------------------------- #
# toy environments
# --------------------------------------------------------------------------- #


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


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_env_finished_episodes_and_saving(tmp_path, mode):
    env = make_vector_env(VarBandit, N_ENVS, mode, save_dir=str(tmp_path), save_format="npz")
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
    else:  # each subprocess wrote its own episodes
        assert len(pids) == N_ENVS and f"bandit-pid{os.getpid()}" not in pids


def test_sync_and_async_agree():
    results = {}
    for mode in ("sync", "async"):
        env = make_vector_env(VarBandit, N_ENVS, mode)
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
