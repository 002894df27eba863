"""Tests for amago_like.envs.exploration (EpsilonGreedy, BilevelEpsilonGreedy)."""

from __future__ import annotations

import glob
import os

import gymnasium as gym
import numpy as np
import pytest

from amago_like.data.trajectory import load_trajectory
from amago_like.envs.builtin.dark_room import DarkRoom
from amago_like.envs.exploration import (
    EPSILON_KEY,
    BilevelEpsilonGreedy,
    EpsilonGreedy,
    ExplorationWrapper,
    linear_anneal,
)
from amago_like.envs.vector import finished_episodes, make_vector_env
from amago_like.envs.wrapper import AMAGOEnv, EpisodeStats


class BoxEnv(gym.Env):
    """Toy env with Box(-1, 1, (dim,)) actions that records every action it receives."""

    def __init__(self, dim: int = 3, length: int = 5):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.length, self.t, self.received = length, 0, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.received.append(np.array(action))
        self.t += 1
        return np.zeros(2, np.float32), 0.0, self.t >= self.length, False, {}


def _dark_room() -> AMAGOEnv:
    return AMAGOEnv(DarkRoom(size=5, episode_length=4, k_episodes=2))


def _fixed(wrapper_cls, env, **kw):
    return wrapper_cls(env, randomize_eps=False, **kw)


def test_linear_anneal():
    assert linear_anneal(1.0, 0.0, 0, 10) == 1.0
    assert linear_anneal(1.0, 0.0, 5, 10) == 0.5
    assert linear_anneal(1.0, 0.0, 10, 10) == 0.0 and linear_anneal(1.0, 0.0, 99, 10) == 0.0


def test_epsilon_anneals_with_total_steps_across_episodes():
    env = _fixed(EpsilonGreedy, _dark_room(), eps_start=1.0, eps_end=0.1, steps_anneal=100)
    env.reset(seed=0)
    expected = {0: 1.0, 10: 0.91, 50: 0.55, 100: 0.1, 130: 0.1}
    for n in range(131):
        if n in expected:
            assert env.total_steps == n and env.current_epsilon == pytest.approx(expected[n])
        eps = env.current_epsilon
        _, _, done, _, info = env.step(0)
        if done:  # 8-step meta-episodes: the count goes on across resets
            assert info[EPSILON_KEY] == pytest.approx(eps) == info["episode_stats"].metrics[EPSILON_KEY]
            env.reset()
        else:  # only the final step reports epsilon (each info key costs vector envs every step)
            assert EPSILON_KEY not in info
    assert env.local_step == 131 % 8


def test_steps_anneal_none_anneals_over_half_the_run_it_is_told():
    env = _fixed(EpsilonGreedy, _dark_room(), eps_start=1.0, eps_end=0.0, steps_anneal=None)
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="bind steps_anneal to a number of env steps"):
        env.step(0)  # on its own, nothing told the wrapper how long the run is
    env.run_steps = 200
    assert env.anneal_steps == 100
    assert env.epsilon_schedule(50, 0) == pytest.approx(0.5) and env.epsilon_schedule(150, 0) == 0.0
    bilevel = _fixed(BilevelEpsilonGreedy, _dark_room(), rollout_horizon=10, steps_anneal=None)
    bilevel.run_steps = 40
    assert bilevel.epsilon_schedule(20, 0) == pytest.approx(0.8)  # at eps_end_start after half the run
    with pytest.raises(ValueError, match="or None: half the run"):
        EpsilonGreedy(_dark_room(), steps_anneal=0)


def test_bilevel_schedule_within_rollout_and_over_training():
    env = _fixed(BilevelEpsilonGreedy, _dark_room(), rollout_horizon=10, steps_anneal=100)
    s = env.epsilon_schedule
    assert s(0, 0) == pytest.approx(1.0) and s(0, 5) == pytest.approx(0.525) and s(0, 10) == pytest.approx(0.05)
    assert s(0, 25) == pytest.approx(0.05)  # held after the horizon
    assert s(100, 0) == pytest.approx(0.8) and s(100, 10) == pytest.approx(0.01) and s(500, 5) == pytest.approx(0.405)
    assert s(50, 0) == pytest.approx(0.9) and s(50, 10) == pytest.approx(0.03)
    # the wrapper's own step counter drives the rollout position and restarts at reset
    env.reset(seed=0)
    seen = []
    for _ in range(8):  # one meta-episode of DarkRoom(episode_length=4, k=2)
        seen.append(env.current_epsilon)
        _, _, done, _, info = env.step(0)
    assert done and info[EPSILON_KEY] == seen[-1]
    np.testing.assert_allclose(seen, [s(t, t) for t in range(8)])
    assert seen == sorted(seen, reverse=True)
    env.reset()
    assert env.local_step == 0 and env.current_epsilon == pytest.approx(s(8, 0))


def test_bilevel_horizon_none_is_the_length_of_the_rollouts_the_actor_finished():
    learned = _fixed(BilevelEpsilonGreedy, _dark_room(), steps_anneal=100)
    stated = _fixed(BilevelEpsilonGreedy, _dark_room(), rollout_horizon=8, steps_anneal=100)
    assert learned.rollout_horizon is None and learned.longest_rollout == 0
    learned.reset(seed=0)
    first = []
    for _ in range(8):  # the first meta-episode: no horizon known, the rollout-start epsilon throughout
        first.append(learned.current_epsilon)
        _, _, done, _, _ = learned.step(0)
    assert done and learned.longest_rollout == 8
    np.testing.assert_allclose(first, [linear_anneal(1.0, 0.8, t, 100) for t in range(8)])
    assert first[-1] > stated.epsilon_schedule(7, 7) + 0.5  # a stated horizon would have annealed by now
    learned.reset()
    second = []
    for _ in range(8):  # from the second on, the same schedule as a horizon of 8 stated outright
        second.append(learned.current_epsilon)
        learned.step(0)
    np.testing.assert_allclose(second, [stated.epsilon_schedule(t, t - 8) for t in range(8, 16)])
    assert second == sorted(second, reverse=True)


def test_randomized_epsilon_per_actor_seed():
    def multiplier(seed):
        env = EpsilonGreedy(_dark_room())
        env.reset(seed=seed)
        return env.eps_multiplier

    values = [multiplier(s) for s in range(10)]
    assert all(0.0 <= v <= 1.0 for v in values) and len(set(values)) == 10
    assert multiplier(3) == values[3]  # reproducible for the same seed
    assert EpsilonGreedy(_dark_room()).eps_multiplier != EpsilonGreedy(_dark_room()).eps_multiplier  # unseeded
    env = EpsilonGreedy(_dark_room(), eps_start=0.5, eps_end=0.5)
    env.reset(seed=4)
    m = env.eps_multiplier
    env.reset()  # unseeded resets keep the factor
    assert env.eps_multiplier == m and env.current_epsilon == pytest.approx(0.5 * m)
    assert _fixed(EpsilonGreedy, _dark_room()).eps_multiplier == 1.0


def test_seeding_the_wrapper_does_not_change_the_task():
    plain, wrapped = DarkRoom(), EpsilonGreedy(AMAGOEnv(DarkRoom()))
    for seed in range(5):
        plain.reset(seed=seed)
        wrapped.reset(seed=seed)
        assert wrapped.unwrapped.goal == plain.goal


def test_discrete_replacement_rate_matches_epsilon():
    env = _fixed(EpsilonGreedy, _dark_room(), eps_start=0.4, eps_end=0.4)
    env.reset(seed=0)
    n = 20_000
    out = np.array([int(env.add_exploration_noise(np.array([2]), 0)[0]) for _ in range(n)])
    # replaced w.p. eps by a uniform action, which is still 2 w.p. 1/5
    changed = np.mean(out != 2)
    assert abs(changed - 0.4 * 4 / 5) < 4 * np.sqrt(0.32 * 0.68 / n)
    counts = np.bincount(out[out != 2], minlength=5)
    assert counts[2] == 0 and all(abs(c / n - 0.08) < 0.01 for i, c in enumerate(counts) if i != 2)
    assert env.add_exploration_noise(3, 0).shape == ()  # scalar actions stay scalar
    zero = _fixed(EpsilonGreedy, _dark_room(), eps_start=0.0, eps_end=0.0)
    assert all(int(zero.add_exploration_noise(np.array([1]), 0)[0]) == 1 for _ in range(200))


def test_continuous_noise_std_and_bounds():
    env = _fixed(EpsilonGreedy, AMAGOEnv(BoxEnv(dim=4)), eps_start=0.25, eps_end=0.25)
    env.reset(seed=0)
    noisy = np.stack([env.add_exploration_noise(np.zeros(4, np.float32), 0) for _ in range(5000)])
    assert noisy.dtype == np.float32 and noisy.shape == (5000, 4)
    assert abs(noisy.std() - 0.25) < 0.01 and abs(noisy.mean()) < 0.01
    near_edge = np.stack([env.add_exploration_noise(np.full(4, 0.95, np.float32), 0) for _ in range(2000)])
    assert near_edge.max() == 1.0 and near_edge.min() >= -1.0 and (near_edge == 1.0).mean() > 0.3
    big = _fixed(EpsilonGreedy, AMAGOEnv(BoxEnv(dim=4)), eps_start=1.0, eps_end=1.0)
    wild = np.stack([big.add_exploration_noise(np.full(4, 0.5), 0) for _ in range(2000)])
    assert wild.min() >= -1.0 and wild.max() <= 1.0


def test_saved_trajectory_holds_executed_action(tmp_path):
    box = BoxEnv(dim=3, length=6)
    inner = AMAGOEnv(box)
    inner.configure_saving(str(tmp_path))
    env = _fixed(EpsilonGreedy, inner, eps_start=0.5, eps_end=0.5)
    env.reset(seed=0)
    policy_action = np.full(3, 0.2, np.float32)
    done = False
    while not done:
        obs, _, done, _, info = env.step(policy_action)
    (path,) = glob.glob(os.path.join(tmp_path, "*"))
    traj = load_trajectory(path)
    executed = np.stack(box.received)
    assert not np.allclose(executed, policy_action)  # the noise was applied ...
    np.testing.assert_allclose(traj.actions, executed, atol=1e-6)  # ... and the saved actions are the noisy ones
    np.testing.assert_allclose(traj.rl2s[1:, 1:], executed, atol=1e-6)  # so are the previous-action inputs
    assert info["episode_stats"].metrics[EPSILON_KEY] == 0.5


def test_discrete_trajectory_one_hot_is_the_executed_action(tmp_path):
    inner = _dark_room()
    inner.configure_saving(str(tmp_path))
    env = _fixed(EpsilonGreedy, inner, eps_start=1.0, eps_end=1.0)
    env.reset(seed=1)
    done = False
    while not done:
        _, _, done, _, _ = env.step(0)  # the policy always says "stay"
    (path,) = glob.glob(os.path.join(tmp_path, "*"))
    executed = load_trajectory(path).actions.argmax(axis=1)
    assert (executed != 0).any()


def test_epsilon_reaches_episode_stats():
    env = _fixed(BilevelEpsilonGreedy, _dark_room(), rollout_horizon=8, steps_anneal=10)
    env.reset(seed=0)
    done, last_eps = False, None
    while not done:
        last_eps = env.current_epsilon
        _, _, done, _, info = env.step(1)
    stats = info["episode_stats"]
    assert isinstance(stats, EpisodeStats) and stats.metrics[EPSILON_KEY] == pytest.approx(last_eps)
    assert "log/Episode 2 Return" in stats.metrics  # the env's own metrics are kept


def test_through_make_vector_env(tmp_path):
    """make_vector_env keeps the exploration wrapper outermost and saves through its AMAGOEnv."""

    def make():
        return EpsilonGreedy(_dark_room(), eps_start=0.3, eps_end=0.3)

    venv = make_vector_env(make, 2, "sync", save_dir=str(tmp_path))
    venv.reset(seed=5)
    assert all(isinstance(e, EpsilonGreedy) for e in venv.envs)
    multipliers = [e.eps_multiplier for e in venv.envs]
    episodes = []
    for _ in range(8):
        _, _, _, _, infos = venv.step(np.zeros(2, np.int64))
        episodes += finished_episodes(infos)
    venv.close()
    assert len(episodes) == 2 and len(os.listdir(tmp_path)) == 2
    assert sorted(e.metrics[EPSILON_KEY] for e in episodes) == pytest.approx(sorted(0.3 * m for m in multipliers))


def test_wrapper_needs_an_amago_env_inside():
    with pytest.raises(TypeError, match="AMAGOEnv"):
        EpsilonGreedy(DarkRoom())
    env = EpsilonGreedy(gym.wrappers.RecordEpisodeStatistics(_dark_room()))
    assert isinstance(env.amago_env, AMAGOEnv) and isinstance(env, ExplorationWrapper)
    with pytest.raises(ValueError, match=r"EpsilonGreedy.eps_start must be in \[0, 1\], got 1.5"):
        EpsilonGreedy(_dark_room(), eps_start=1.5)
    with pytest.raises(ValueError, match=r"BilevelEpsilonGreedy.eps_end_end must be in \[0, 1\], got -0.1"):
        BilevelEpsilonGreedy(_dark_room(), eps_end_end=-0.1)
    with pytest.raises(TypeError, match="EpsilonGreedy.eps_end must be a number"):
        EpsilonGreedy(_dark_room(), eps_end="0.1")
    with pytest.raises(ValueError, match="or None: rollout_horizon the env's rollout length"):
        BilevelEpsilonGreedy(_dark_room(), rollout_horizon=0)


def test_noise_stream_is_one_standard_normal_draw_per_step():
    """Noise drawn in blocks (for speed) equals one ``standard_normal`` call per step from the seeded stream,
    across block boundaries; the executed action is the clipped noisy one."""
    from amago_like.envs.exploration import _NOISE_ROWS, _SEED_SALT

    box = BoxEnv(dim=2, length=10_000)
    env = _fixed(EpsilonGreedy, AMAGOEnv(box), eps_start=0.7, eps_end=0.7)
    env.reset(seed=9)
    reference = np.random.default_rng(np.random.SeedSequence([9, _SEED_SALT]))
    policy = np.array([0.5, -0.25], np.float32)
    for _ in range(_NOISE_ROWS + 5):
        env.step(policy)
        expected = np.clip(policy + np.float32(0.7) * reference.standard_normal(2, dtype=np.float32), -1.0, 1.0)
        np.testing.assert_array_equal(box.received[-1], expected)


def test_correlated_noise_is_the_ar1_process_of_the_seeded_stream():
    """With ``noise_correlation`` rho the executed noise is z_t = rho z_(t-1) + sqrt(1 - rho^2) w_t, w_t the seeded
    stream's standard normal draws, carried across block boundaries; a reseed starts the process afresh."""
    from amago_like.envs.exploration import _NOISE_ROWS, _SEED_SALT

    rho, eps = np.float32(0.8), np.float32(0.1)  # eps small enough that no action is clipped
    box = BoxEnv(dim=2, length=10_000)
    env = _fixed(EpsilonGreedy, AMAGOEnv(box), eps_start=float(eps), eps_end=float(eps), noise_correlation=float(rho))
    policy = np.array([0.3, -0.2], np.float32)
    for _ in range(2):  # the second pass checks that reset(seed=) restarts the process, not only the draws
        env.reset(seed=4)
        reference = np.random.default_rng(np.random.SeedSequence([4, _SEED_SALT]))
        z = reference.standard_normal(2, dtype=np.float32)
        for t in range(_NOISE_ROWS + 5):
            if t:
                z = rho * z + np.sqrt(np.float32(1.0) - rho * rho) * reference.standard_normal(2, dtype=np.float32)
            env.step(policy)
            np.testing.assert_allclose(box.received[-1], policy + eps * z, rtol=0, atol=1e-6)


def test_correlated_noise_keeps_unit_variance_and_its_lag_one_correlation():
    box = BoxEnv(dim=2, length=100_000)
    rho = 0.9
    env = _fixed(EpsilonGreedy, AMAGOEnv(box), eps_start=0.1, eps_end=0.1, noise_correlation=rho)
    env.reset(seed=0)
    for _ in range(20_000):
        env.step(np.zeros(2, np.float32))
    z = np.stack(box.received) / 0.1  # (T, 2)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.1)
    lag1 = [np.corrcoef(z[:-1, i], z[1:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(lag1, rho, atol=0.02)
    # white noise (the default) has none
    box_white = BoxEnv(dim=2, length=100_000)
    white = _fixed(EpsilonGreedy, AMAGOEnv(box_white), eps_start=0.1, eps_end=0.1)
    white.reset(seed=0)
    for _ in range(5_000):
        white.step(np.zeros(2, np.float32))
    w = np.stack(box_white.received)[:, 0]
    assert abs(np.corrcoef(w[:-1], w[1:])[0, 1]) < 0.05


@pytest.mark.parametrize("wrapper_cls", [EpsilonGreedy, BilevelEpsilonGreedy])
def test_noise_correlation_is_checked(wrapper_cls):
    kw = {"rollout_horizon": 4} if wrapper_cls is BilevelEpsilonGreedy else {}
    with pytest.raises(ValueError, match="noise_correlation must be in"):
        wrapper_cls(AMAGOEnv(BoxEnv()), noise_correlation=1.0, **kw)
    with pytest.raises(ValueError, match="actions are Discrete"):
        wrapper_cls(_dark_room(), noise_correlation=0.5, **kw)
    assert wrapper_cls(AMAGOEnv(BoxEnv()), noise_correlation=0.5, **kw).noise_correlation == 0.5
