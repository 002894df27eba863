"""Tests for amago_like.envs.builtin.dark_room (DarkRoom)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amago_like.data.trajectory import Trajectory, load_trajectory
from amago_like.envs.builtin.dark_room import SPLITS, DarkRoom, move, search_policy_return, split_goals
from amago_like.envs.wrapper import AMAGOEnv, EpisodeStats


def _run(env: DarkRoom, actions, seed: int | None = None, options=None):
    """Step ``env`` through one meta-episode; returns lists of (obs, reward, terminated, info)."""
    obs, _ = env.reset(seed=seed, options=options)
    out = [(obs, 0.0, False, {})]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        assert not trunc
        out.append((obs, r, term, info))
        if term:
            break
    return out


def test_spaces_and_observations():
    env = DarkRoom(size=5)
    assert env.action_space.n == 5 and env.observation_space.shape == (3,)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    np.testing.assert_allclose(obs, [0.5, 0.5, 1.0])  # centre, first step of an episode
    for a in [4, 4, 4, 1, 1, 1]:  # right x3 hits the wall at x=4; up x3 hits y=4
        obs, *_ = env.step(a)
        assert env.observation_space.contains(obs) and obs[2] == 0.0
    np.testing.assert_allclose(obs[:2], [1.0, 1.0])
    assert env.env_name == "dark-room"


def test_moves_and_walls():
    assert move((2, 2), 0, 5) == (2, 2)
    assert move((2, 2), 1, 5) == (2, 3) and move((2, 2), 2, 5) == (2, 1)
    assert move((2, 2), 3, 5) == (1, 2) and move((2, 2), 4, 5) == (3, 2)
    assert move((0, 0), 3, 5) == (0, 0) and move((4, 4), 1, 5) == (4, 4)


def test_soft_reset_and_termination_after_k_episodes():
    env = DarkRoom(size=5, episode_length=4, k_episodes=3)
    steps = _run(env, [4] * 100, seed=1, options={"goal": (0, 0)})
    assert len(steps) - 1 == 12 and steps[-1][2]  # terminates after exactly k * episode_length steps
    for t in range(1, 13):
        obs, _, term, info = steps[t]
        assert term == (t == 12)
        if t % 4 == 0:  # last step of an episode: next episode's first observation, from the centre
            assert info[f"log/Episode {t // 4} Return"] == 0.0
            if t < 12:
                np.testing.assert_allclose(obs, [0.5, 0.5, 1.0])
        else:
            assert obs[2] == 0.0 and not any(k.startswith("log/Episode") for k in info)
    assert steps[-1][3]["log/Success"] == 0.0
    with pytest.raises(RuntimeError):
        env.step(0)


def test_reward_only_on_goal():
    env = DarkRoom(size=5, episode_length=10, k_episodes=4)
    rng = np.random.default_rng(0)
    for seed in range(20):
        env.reset(seed=seed)
        done = False
        while not done:
            before_first = env.position
            a = int(rng.integers(5))
            _, r, done, _, _ = env.step(a)
            assert r == float(move(before_first, a, 5) == env.goal)


def test_staying_on_goal_pays_every_step_and_success():
    env = DarkRoom(size=5, episode_length=5, k_episodes=2)
    steps = _run(env, [4, 0, 0, 0, 0, 4, 0, 0, 0, 0], options={"goal": (3, 2)})
    assert [s[1] for s in steps[1:]] == [1.0] * 10
    assert steps[5][3]["log/Episode 1 Return"] == 5.0 and steps[10][3]["log/Episode 2 Return"] == 5.0
    assert steps[10][3]["log/Success"] == 1.0


def test_goal_splits_disjoint_covering_and_a_quarter_held_out():
    for size in (3, 5, 7, 9):
        train, test, every = (set(split_goals(size, s)) for s in SPLITS)
        assert train and test and not train & test and train | test == every
        assert (size // 2, size // 2) not in every and len(every) == size * size - 1
        assert len(test) == len(every) // 4
    env = DarkRoom(split="test")
    seen = {(env.reset(seed=s), env.goal)[1] for s in range(200)}
    assert seen == set(split_goals(5, "test"))


def test_unknown_split_and_bad_arguments():
    with pytest.raises(ValueError, match="'train', 'test', 'all'"):
        DarkRoom(split="validation")
    with pytest.raises(ValueError):
        DarkRoom(size=2)
    with pytest.raises(ValueError):
        DarkRoom(goal_set=[(5, 0)])
    env = DarkRoom(goal_set=[(0, 0), [4, 4]])
    assert env.goals == ((0, 0), (4, 4))
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(5)


def test_seeding_is_reproducible():
    actions = np.random.default_rng(3).integers(5, size=36)
    a, b = DarkRoom(), DarkRoom()
    ra, rb = _run(a, actions, seed=7), _run(b, actions, seed=7)
    assert a.goal == b.goal
    for sa, sb in zip(ra, rb):
        np.testing.assert_array_equal(sa[0], sb[0])
        assert sa[1:3] == sb[1:3]
    goals = set()
    for s in range(20):
        a.reset(seed=s)
        goals.add(a.goal)
    assert len(goals) > 3


def test_inside_amago_env():
    env = AMAGOEnv(DarkRoom(size=5, episode_length=6, k_episodes=3))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.discrete and env.action_dim == 5
    t, done, total = 0, False, 0.0
    while not done:
        obs, r, done, trunc, info = env.step(np.array([t % 5]))
        assert env.observation_space.contains(obs) and obs["_time_idx"][0] == t + 1
        total, t = total + r, t + 1
    stats = info["episode_stats"]
    assert isinstance(stats, EpisodeStats) and stats.env_name == "dark-room"
    assert stats.length == 18 and stats.ret == total
    assert set(stats.metrics) == {"log/Episode 1 Return", "log/Episode 2 Return", "log/Episode 3 Return", "log/Success"}
    assert sum(stats.metrics[f"log/Episode {i} Return"] for i in (1, 2, 3)) == total


def test_reference_returns():
    env = DarkRoom()
    best, oracle, rand = env.best_return(), env.oracle_return(), env.random_return()
    assert rand < best <= oracle <= env.k * env.episode_length
    assert env.random_return() == rand and DarkRoom().random_return() == rand  # fixed seed, cached
    # one search variant: finds every goal, and best_return keeps the best variant's mean
    values = [search_policy_return(DarkRoom(), g, True, sorted(env.goals)) for g in env.goals]
    assert min(values) > 0 and np.mean(values) <= best
    # Monte Carlo through the env itself agrees with the vectorised estimate
    rng, returns = np.random.default_rng(1), []
    for s in range(300):
        env.reset(seed=s)
        done, ret = False, 0.0
        while not done:
            _, r, done, _, _ = env.step(int(rng.integers(5)))
            ret += r
        returns.append(ret)
    assert abs(np.mean(returns) - rand) < 4 * np.std(returns) / np.sqrt(len(returns)) + 0.05


def test_held_out_reference_searches_the_whole_grid():
    """On held-out goals a searcher cannot know which cells hold goals: searching the whole grid
    scores less than searching only the six held-out cells, and for the full goal set both agree."""
    test = DarkRoom(split="test")
    assert test.random_return() < test.best_return("grid") < test.best_return("goals")
    full = DarkRoom(split="all")
    assert full.best_return("grid") == full.best_return("goals")
    with pytest.raises(ValueError, match="search must be 'goals', 'grid' or 'train_first'"):
        test.best_return("everything")


def test_a_searcher_of_the_training_cells_first_reaches_part_of_the_held_out_reference():
    """The "train_first" searcher checks the training goal cells before the rest: on training goals it is the "goals" searcher;
    on held-out ones it finds the goal later than the whole-grid searcher, and still finds every goal."""
    train, test = DarkRoom(split="train"), DarkRoom(split="test")
    assert train.best_return("train_first") == train.best_return("goals")
    assert test.random_return() < test.best_return("train_first") < test.best_return("grid")
    train_cells = split_goals(5, "train")
    for goal in test.goals:
        assert search_policy_return(test, goal, True, sorted(split_goals(5, "all")), train_cells) > 0


def test_evaluate_prints_the_held_out_references_of_a_dark_room(capsys):
    from amago_like import evaluate

    evaluate._print_toy(DarkRoom(split="test"), {"test/Episode 1 Return": 1.0})
    refs = capsys.readouterr().out
    assert "best searching the whole grid 23.67, searching the training cells first 18.00" in refs
    evaluate._print_toy(DarkRoom(split="train"), {"test/Episode 1 Return": 1.0})
    assert "training cells first" not in capsys.readouterr().out  # on training goals it is "best"


def _played(goal, actions, save_every: int | None = None) -> list[Trajectory]:
    """What AMAGOEnv records of ``actions`` played with the goal in ``goal``: the trajectory, or its segment files."""
    env = AMAGOEnv(DarkRoom())
    with tempfile.TemporaryDirectory() as folder:
        if save_every is not None:
            env.configure_saving(folder, save_every=save_every)
        env.reset(seed=0, options={"goal": tuple(int(c) for c in goal)})
        for a in actions:
            env.step(a)
        if save_every is None:
            return [env.trajectory()]
        segments = [load_trajectory(os.path.join(folder, name)) for name in os.listdir(folder)]
    return sorted(segments, key=lambda t: t.time_idxs[0, 0])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), save_every=st.sampled_from([None, 5]))
def test_hindsight_relabeling_gives_the_trajectory_the_env_records_with_a_goal_cell_it_reached(seed, save_every):
    """Played again with the goal in the cell the relabeler picked (a training goal cell a move ended in), the same
    actions earn exactly the relabeled rewards and previous rewards, in whole trajectories and in segments."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 5, size=36)
    relabeler = DarkRoom().hindsight_relabeler()
    picked = relabeler.reached_goal(_played((0, 0), actions)[0], rng)
    ends, cell = [], (2, 2)  # where each move ended, by the env's own rule
    for t, a in enumerate(actions):
        cell = move(cell, int(a), 5)
        ends.append(cell)
        cell = (2, 2) if t % 12 == 11 else cell
    if picked is None:
        assert not set(ends) & set(split_goals(5, "train"))
        return
    assert tuple(picked) in split_goals(5, "train") and tuple(picked) in ends
    for part, want in zip(_played((0, 0), actions, save_every), _played(picked, actions, save_every), strict=True):
        if part.time_idxs[0, 0] > 0 and part.obs["observation"][0, 2]:
            assert relabeler(part.copy(), rng) is None  # starts right after an episode's last move
            continue
        got = relabeler.with_goal(part.copy(), picked)
        np.testing.assert_array_equal(got.rews, want.rews)
        np.testing.assert_array_equal(got.rl2s, want.rl2s)
