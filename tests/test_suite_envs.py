"""The learning suite's envs (PointGoal, PointDynamics, TMaze, the noisy MetaBandit); its statistics are amago_like.stats's
(tests/test_stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amago_like import MetaBandit, PointDynamics, PointGoal, TMaze
from amago_like.data.trajectory import load_trajectory
from amago_like.envs.builtin.bandit import bayes_greedy_return
from amago_like.envs.builtin.point_dynamics import hidden_angle, identifier_return
from amago_like.envs.builtin.point_goal import TEST_SECTORS, goal_angle, searcher_return
from amago_like.envs.wrapper import AMAGOEnv


# ------------------------------------------------------------------ PointGoal
def test_point_goal_splits_are_disjoint_sectors_of_the_half_circle():
    width = math.pi / 10
    for u in np.linspace(0, 0.999, 200):
        train, test = goal_angle(u, "train"), goal_angle(u, "test")
        assert 0 <= train <= math.pi and 0 <= test <= math.pi
        assert int(test // width) in TEST_SECTORS
        assert int(train // width) not in TEST_SECTORS


@pytest.mark.parametrize("reward", ["dense", "sparse"])
def test_point_goal_soft_resets_and_reports_each_episode(reward):
    env = PointGoal(reward, episode_length=5, k_episodes=3)
    obs, _ = env.reset(seed=0, options={"angle": math.pi / 2})
    np.testing.assert_allclose(obs, [0, 0, 1])
    np.testing.assert_allclose(env.goal, [0, 1], atol=1e-12)
    infos = []
    for t in range(15):
        obs, r, term, trunc, info = env.step(np.array([0.0, 1.0]))
        infos.append(info)
        assert term == (t == 14) and not trunc
        if t % 5 == 4 and t < 14:
            np.testing.assert_allclose(obs, [0, 0, 1])  # next episode starts at the origin
    # every episode walks straight up to the goal: 5 steps of 0.2 end on it
    assert infos[-1]["log/Success"] == 1.0
    assert {k for i in infos for k in i if k.startswith("log/Episode")} == {
        f"log/Episode {i} Return" for i in (1, 2, 3)
    }
    with pytest.raises(RuntimeError):
        env.step(np.zeros(2))


def test_point_goal_rewards():
    dense, sparse = PointGoal("dense"), PointGoal("sparse")
    for env in (dense, sparse):
        env.reset(options={"angle": 0.0})
    _, r_dense, *_ = dense.step(np.array([1.0, 0.0]))
    _, r_sparse, *_ = sparse.step(np.array([1.0, 0.0]))
    assert r_dense == pytest.approx(-0.8) and r_sparse == 0.0
    for _ in range(3):
        _, r_sparse, *_ = sparse.step(np.array([1.0, 0.0]))
    assert r_sparse == 1.0  # at (0.8, 0): within 0.2 of (1, 0)


@pytest.mark.parametrize("reward", ["dense", "sparse"])
def test_point_goal_searcher_beats_random_and_finds_every_goal(reward):
    env = PointGoal(reward, split="test")
    assert env.best_return() > env.random_return() + (50 if reward == "dense" else 40)
    for u in np.linspace(0, 0.99, 7):
        total = searcher_return(env, goal_angle(u, "test"))
        # it stays on the goal once found, so the last episode ends there
        assert np.linalg.norm(env.position - env.goal) <= env.goal_radius
        assert total > (-12 if reward == "dense" else 25)


def test_point_goal_wraps_in_amago_env():
    env = AMAGOEnv(PointGoal("sparse", episode_length=4, k_episodes=2))
    obs, _ = env.reset(seed=0)
    steps = 0
    done = False
    while not done:
        obs, r, term, trunc, info = env.step(np.zeros(2, np.float32))
        done, steps = term or trunc, steps + 1
    assert steps == 8


# ------------------------------------------------------------------ PointDynamics
def test_point_dynamics_splits_are_disjoint_sectors_of_the_full_turn():
    width = 2 * math.pi / 10
    for u in np.linspace(0, 0.999, 200):
        train, test = hidden_angle(u, "train"), hidden_angle(u, "test")
        assert 0 <= train < 2 * math.pi and 0 <= test < 2 * math.pi
        assert int(test // width) in TEST_SECTORS
        assert int(train // width) not in TEST_SECTORS


def test_point_dynamics_turns_every_action_by_the_hidden_angle_and_shows_each_episodes_goal():
    env = PointDynamics(episode_length=4, k_episodes=2)
    obs, _ = env.reset(seed=3, options={"angle": math.pi / 2})
    first_goal = env.goal.copy()
    np.testing.assert_allclose(obs, [0, 0, *first_goal, 1], atol=1e-6)
    assert np.linalg.norm(first_goal) == pytest.approx(1.0)
    obs, r, *_ = env.step(np.array([1.0, 0.0]))  # "right" moves the robot up by a quarter turn
    np.testing.assert_allclose(env.position, [0, 0.2], atol=1e-12)
    assert r == pytest.approx(-np.linalg.norm(env.position - first_goal))
    np.testing.assert_allclose(obs, [0, 0.2, *first_goal, 0], atol=1e-6)
    for _ in range(3):
        obs, *_ = env.step(np.zeros(2))
    np.testing.assert_allclose(obs[[0, 1, 4]], [0, 0, 1])  # the next episode: back at the origin, a new goal
    assert not np.allclose(obs[2:4], first_goal)
    for t in range(4):
        _, _, term, _, info = env.step(np.zeros(2))
        assert term == (t == 3)
    assert info["log/Success"] == 0.0 and "log/Episode 2 Return" in info


def test_point_dynamics_can_show_its_angle():
    env = PointDynamics(show_angle=True)
    obs, _ = env.reset(seed=0, options={"angle": math.pi / 3})
    assert env.observation_space.shape == obs.shape == (7,)
    np.testing.assert_allclose(obs[5:], [0.5, math.sqrt(3) / 2], atol=1e-6)
    assert PointDynamics().reset(seed=0)[0].shape == (5,)
    env = PointDynamics(show_previous=True)
    env.reset(seed=0, options={"angle": 0.0})
    env.step(np.array([1.0, 0.0]))
    obs, *_ = env.step(np.array([0.0, 1.0]))
    assert env.observation_space.shape == obs.shape == (7,)
    np.testing.assert_allclose(obs[[0, 1, 5, 6]], [0.2, 0.2, 0.2, 0.0], atol=1e-6)  # now, and before the last move


@pytest.mark.parametrize("split", ["train", "test"])
def test_point_dynamics_needs_the_angle_a_controller_that_reads_it_far_outscores_one_that_cannot(split):
    env = PointDynamics(split=split)
    best, random, memoryless = env.best_return(), env.random_return(), env.memoryless_return()
    assert best > random + 60 and memoryless < random  # steering in the wrong frame drives away from the goals
    for i, u in enumerate(np.linspace(0, 0.99, 7)):
        total = identifier_return(env, hidden_angle(u, split), seed=i)
        assert np.linalg.norm(env.position - env.goal) <= env.goal_radius  # it ends every episode on its goal
        assert total > -8


def test_evaluate_prints_the_references_of_every_built_in_toy_env(capsys):
    from amago_like import evaluate

    evaluate._print_toy(PointDynamics(split="test"), {"test/Episode 1 Return": -9.0})
    assert "(random -82.02, best -6.03, steering without memory -132.06)" in capsys.readouterr().out
    evaluate._print_toy(PointGoal("dense", split="test"), {"test/Episode 1 Return": -9.0})
    out = capsys.readouterr().out
    assert "best -6.1" in out and "without memory" not in out


# ------------------------------------------------------------------ TMaze
@pytest.mark.parametrize("cue", [1, -1])
def test_tmaze_rewards_only_the_turn_the_cue_named(cue):
    for turn in (0, 1):
        env = TMaze(length=10)
        obs, _ = env.reset(options={"cue": cue})
        np.testing.assert_allclose(obs, [cue, 0])
        for t in range(10):
            obs, r, term, _, _ = env.step(1 - turn)  # the corridor ignores the action
            assert r == 0.0 and not term and obs[0] == 0.0
            assert obs[1] == float(t == 9)
        obs, r, term, _, info = env.step(turn)
        assert term and r == float((turn == 0) == (cue == 1)) == info["log/Success"]


def test_tmaze_cues_are_balanced():
    env = TMaze(length=3)
    cues = [env.reset(seed=s)[0][0] for s in range(400)]
    assert 150 < sum(c > 0 for c in cues) < 250


# ------------------------------------------------------------------ noisy bandit
def test_noisy_bandit_pays_by_probability_and_names_itself():
    env = MetaBandit(4, 200, good_prob=0.8, bad_prob=0.2)
    assert env.env_name == "bandit-4arms-noisy"
    env.reset(seed=0)
    good = env._good
    wins = [env.step(good)[1] for _ in range(100)] + [env.step((good + 1) % 4)[1] for _ in range(100)]
    assert 0.65 < np.mean(wins[:100]) < 0.95 and 0.05 < np.mean(wins[100:]) < 0.35
    assert env.random_return() == pytest.approx(200 * (0.8 + 3 * 0.2) / 4)
    with pytest.raises(ValueError, match="bad_prob < good_prob"):
        MetaBandit(3, 6, good_prob=0.2, bad_prob=0.5)


def test_bayes_greedy_searcher_is_optimal_without_noise_and_beats_random_with_it():
    assert bayes_greedy_return(3, 6, 1.0, 0.0) == pytest.approx(MetaBandit(3, 6).best_return(), abs=0.03)
    noisy = MetaBandit(5, 12, good_prob=0.8, bad_prob=0.2)
    assert noisy.random_return() + 2.0 < noisy.best_return() < 12 * 0.8


# ------------------------------------------------------------------ the contextual bandit (benchmarks/learning)
def test_contextual_bandit_shows_its_answer_and_its_references_hold(contextual_bandit):
    env = contextual_bandit.ContextualBandit()

    def mean_return(act, episodes: int = 40) -> float:
        returns = []
        for i in range(episodes):
            obs, _ = env.reset(seed=i)
            total, done = 0.0, False
            while not done:
                obs, r, done, _, _ = env.step(act(obs))
                total += r
            returns.append(total)
        return float(np.mean(returns))

    rng = np.random.default_rng(0)
    assert mean_return(lambda obs: obs[:2]) == pytest.approx(0.0, abs=1e-5)  # acting on what it sees is optimal
    assert mean_return(lambda obs: np.zeros(2)) == pytest.approx(contextual_bandit.ZERO_ACTION_RETURN, abs=1.5)
    assert mean_return(lambda obs: rng.uniform(-1, 1, 2)) == pytest.approx(contextual_bandit.RANDOM_RETURN, abs=1.5)


@pytest.mark.parametrize("make", [lambda r: PointGoal(goal_radius=r), lambda r: PointDynamics(goal_radius=r)])
@pytest.mark.parametrize("radius", [0.0, 1.0, -0.1])
def test_point_robots_refuse_a_goal_radius_off_the_unit_circle_scale(make, radius):
    with pytest.raises(ValueError, match=r"goal_radius must be in \(0, 1\)"):
        make(radius)


# --------------------------------------------------------------------------- #
# hindsight relabeling of point-goal trajectories
# --------------------------------------------------------------------------- #


def _played(reward: str, angle: float, actions: np.ndarray, save_every: int | None = None, tmp_path=None):
    """The trajectory AMAGOEnv records of ``actions`` played with the goal at ``angle`` (its segment files, in order,
    where ``save_every`` cuts them)."""
    env = AMAGOEnv(PointGoal(reward))
    if save_every is not None:
        env.configure_saving(str(tmp_path), save_every=save_every)
    env.reset(seed=0, options={"angle": angle})
    for a in actions:
        env.step(a)
    if save_every is None:
        return env.trajectory()
    return sorted((load_trajectory(str(p)) for p in tmp_path.iterdir()), key=lambda t: t.time_idxs[0, 0])


@settings(max_examples=25, deadline=None)
@given(
    reward=st.sampled_from(["dense", "sparse"]),
    heading=st.floats(0.0, math.pi),
    noise=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_hindsight_relabeling_gives_the_trajectory_the_env_records_with_the_goal_it_reached(
    reward, heading, noise, seed
):
    """Played again with the goal where the relabeler put it, the same actions earn exactly the relabeled rewards
    (and previous rewards), and that goal is one the training split could draw, reached by the trajectory."""
    rng = np.random.default_rng(seed)
    toward = np.array([math.cos(heading), math.sin(heading)])
    actions = np.clip(toward + rng.normal(0.0, noise, size=(75, 2)), -1.0, 1.0).astype(np.float32)
    traj = _played(reward, goal_angle(0.5, "train"), actions)
    relabeler = PointGoal(reward).hindsight_relabeler()
    goal = relabeler.reached_goal(traj, rng)
    if goal is None:  # nothing came within the goal radius of the circle at a training angle
        return
    angle = math.atan2(goal[1], goal[0])
    sector = int(angle // (math.pi / 10))
    assert 0 <= angle <= math.pi and sector not in TEST_SECTORS and math.isclose(np.linalg.norm(goal), 1.0)
    relabeled = relabeler.with_goal(traj.copy(), goal)
    replay = _played(reward, angle, traj.actions)
    # the observations are float32: a move that ends on the goal's radius (to 1e-5) may be paid either way
    ends = replay.obs["observation"][:-1, :2] + np.clip(traj.actions, -1, 1) * 0.2
    distance = np.linalg.norm(ends - [math.cos(angle), math.sin(angle)], axis=1)
    clear = np.abs(distance - relabeler.goal_radius) > 1e-5  # (T,)
    np.testing.assert_allclose(relabeled.rews[clear], replay.rews[clear], atol=1e-5)
    np.testing.assert_allclose(relabeled.rl2s[1:][clear], replay.rl2s[1:][clear], atol=1e-5)
    np.testing.assert_array_equal(relabeled.rl2s[:, 1:], replay.rl2s[:, 1:])
    if reward == "sparse":
        assert relabeled.rews.sum() >= 1.0, "a goal the trajectory reached pays at least once"


def test_hindsight_relabeling_needs_a_reached_goal_and_relabels_later_segments_from_their_start(tmp_path):
    relabeler = PointGoal("sparse").hindsight_relabeler()
    rng = np.random.default_rng(0)
    still = _played("sparse", 1.0, np.zeros((75, 2), np.float32))
    assert relabeler.reached_goal(still, rng) is None and relabeler(still, rng) is None
    held_out = goal_angle(0.5, "test")  # walking straight at a held-out goal reaches no training goal
    straight = np.tile(np.array([math.cos(held_out), math.sin(held_out)], np.float32), (75, 1))
    assert relabeler.reached_goal(_played("sparse", 1.0, straight), rng) is None
    # segments of 10 transitions: each later one starts with the previous reward of the goal it is relabeled with
    actions = np.tile(np.array([0.9, 0.3], np.float32), (75, 1))  # out along 0.32 rad, in training sector 1
    segments = _played("sparse", 2.0, actions, save_every=10, tmp_path=tmp_path / "played")
    goal = relabeler.reached_goal(_played("sparse", 2.0, actions), rng)
    angle = math.atan2(goal[1], goal[0])
    replayed = _played("sparse", angle, actions, save_every=10, tmp_path=tmp_path / "replayed")
    assert len(segments) == len(replayed) > 2
    for segment, want in zip(segments, replayed):
        if segment.time_idxs[0, 0] > 0 and segment.obs["observation"][0, 2]:  # starts right after an attempt ended
            assert relabeler(segment.copy(), rng) is None
            continue
        got = relabeler.with_goal(segment.copy(), goal)
        np.testing.assert_allclose(got.rl2s, want.rl2s, atol=1e-5)
        np.testing.assert_allclose(got.rews, want.rews, atol=1e-5)
