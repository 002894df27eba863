"""Tests for amago_like.envs.builtin.metaworld and metaworld_benchmarks (Meta-World v3, k attempts per task).

Fast by design: ML1 benchmarks (~1-2 s each) plus at most one ML10 build shared by a
module-scoped fixture.  The on-disk benchmark cache is pointed at a temporary folder.
"""

from __future__ import annotations

import pickle

import gin
import numpy as np
import pytest

pytest.importorskip("metaworld")

from amago_like.checks import ConfigTypeError  # noqa: E402
from amago_like.envs.builtin import metaworld_benchmarks as benchmarks  # noqa: E402
from amago_like.envs.builtin.metaworld import (  # noqa: E402
    KEpisodeMetaworld,
    Metaworld,
    get_benchmark,
)

ML10_TRAIN = {
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "sweep-v3",
    "basketball-v3",
}
ML10_TEST = {
    "drawer-open-v3",
    "door-close-v3",
    "shelf-place-v3",
    "sweep-into-v3",
    "lever-pull-v3",
}
ML1 = "reach-v3"


@pytest.fixture(scope="module", autouse=True)
def tmp_disk_cache(tmp_path_factory):
    """Keep the benchmark disk cache of this test module out of the user's home."""
    path = tmp_path_factory.mktemp("amago_like_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMAGO_LIKE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def ml10(tmp_disk_cache):
    """The one ML10 build of this file (~8-16 s); later constructions hit the cache."""
    return get_benchmark("ml10", seed=0)


def run_episode(env, seed=None, actions=None):
    """Run until terminated; return per-step (obs, reward, terminated, truncated, info)."""
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(0)
    steps = [(obs, 0.0, False, False, info)]
    t = 0
    while True:
        a = actions[t] if actions is not None else rng.uniform(-1, 1, 4).astype(np.float32)
        obs, rew, term, trunc, info = env.step(a)
        steps.append((obs, rew, term, trunc, info))
        t += 1
        if term or trunc:
            return steps
        assert t < 10_000, "episode never ended"


# --------------------------------------------------------------------------- #
# Benchmark contents and name validation
# --------------------------------------------------------------------------- #


def test_ml10_class_sets_match_published(ml10):
    assert set(ml10.train_classes) == ML10_TRAIN
    assert set(ml10.test_classes) == ML10_TEST
    assert len(ml10.train_tasks) == 500 and len(ml10.test_tasks) == 250

    train = KEpisodeMetaworld("ML10", split="train")
    test = KEpisodeMetaworld("ml10", split="test")
    assert set(train.task_names) == ML10_TRAIN
    assert set(test.task_names) == ML10_TEST
    assert get_benchmark("Ml10", seed=0) is ml10  # built once per process


@pytest.mark.parametrize("bad", ["ml11", "ML100", "not-a-task-v3", ""])
def test_unknown_benchmark_lists_valid_names(bad):
    with pytest.raises(ValueError) as exc:
        KEpisodeMetaworld(bad)
    msg = str(exc.value)
    assert repr(bad) in msg
    for name in ("ml10", "ml45", "reach-v3", "pick-place-v3", "door-open-v3"):
        assert name in msg


def test_v2_name_suggests_v3():
    with pytest.raises(ValueError) as exc:
        KEpisodeMetaworld("reach-v2")
    msg = str(exc.value)
    assert "'reach-v3'" in msg and "'reach-v2'" in msg and "ml10" in msg
    with pytest.raises(ValueError, match="pick-place-v3"):
        KEpisodeMetaworld("Pick-Place-V2")


def test_unknown_split_lists_valid_splits():
    with pytest.raises(ValueError) as exc:
        KEpisodeMetaworld(ML1, split="validation")
    msg = str(exc.value)
    assert "'validation'" in msg and "'train'" in msg and "'test'" in msg


@pytest.mark.parametrize("kwargs", [{"max_episode_length": 501}, {"max_episode_length": 0}, {"k_episodes": 0}])
def test_bad_lengths_fail_at_construction(kwargs):
    with pytest.raises(ValueError):
        KEpisodeMetaworld(ML1, **kwargs)


# --------------------------------------------------------------------------- #
# Spaces, laziness
# --------------------------------------------------------------------------- #


def test_spaces_and_lazy_simulators(ml10):
    env = KEpisodeMetaworld("ml10", k_episodes=2, max_episode_length=5)
    assert env.observation_space.shape == (40,)
    assert env.observation_space.dtype == np.float32
    assert np.all(np.isinf(env.observation_space.low)) and np.all(np.isinf(env.observation_space.high))
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)

    assert tuple(env._sims) == ()  # nothing built before the first reset
    assert env.env_name is None
    obs, info = env.reset(seed=0)
    assert tuple(env._sims) == (env.env_name,)
    assert env.env_name in ML10_TRAIN and env.unwrapped.env_name == env.env_name
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert info["attempt"] == 1

    # Reusing a class's simulator: never more simulators than distinct classes seen.
    seen = {env.env_name}
    for s in range(1, 6):
        env.reset(seed=s)
        seen.add(env.env_name)
        assert set(tuple(env._sims)) == seen
    env.close()
    assert tuple(env._sims) == ()


def test_step_before_reset_and_after_end_raise():
    env = KEpisodeMetaworld(ML1, k_episodes=1, max_episode_length=3)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(4, np.float32))
    run_episode(env, seed=0)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(4, np.float32))
    env.close()


# --------------------------------------------------------------------------- #
# k-attempt bookkeeping
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("k,length", [(3, 10), (1, 4)])
def test_k_attempt_bookkeeping(k, length):
    env = KEpisodeMetaworld(ML1, k_episodes=k, max_episode_length=length)
    for episode in range(2):  # a second reset starts a fresh k-attempt episode
        steps = run_episode(env, seed=episode)
        assert len(steps) - 1 == k * length  # terminates after exactly k * length steps
        first_obs = steps[0][0]
        for t, (obs, rew, term, trunc, info) in enumerate(steps):
            assert obs.shape == (40,) and obs.dtype == np.float32
            attempt_start = t % length == 0 and t < k * length
            assert obs[-1] == (1.0 if attempt_start else 0.0), t
            if attempt_start:  # soft reset: same task, same start state
                np.testing.assert_allclose(obs, first_obs, atol=1e-6)
            assert info["attempt"] == min(t // length + 1, k)
            trial_keys = [key for key in info if key.startswith("log/Trial ")]
            if t > 0 and t % length == 0:
                i = t // length
                assert trial_keys == [
                    f"log/Trial {i} Success",
                    f"log/Trial {i} Success Fraction",
                    f"log/Trial {i} Min Distance",
                ]
                assert info[trial_keys[0]] in (0.0, 1.0)
                assert 0.0 <= info[trial_keys[1]] <= 1.0 and (info[trial_keys[1]] > 0) == info[trial_keys[0]]
                assert 0.0 <= info[trial_keys[2]] < 1.0
            else:
                assert trial_keys == []
            assert not trunc
            assert term == (t == k * length)
            assert ("log/Success" in info) == (t == k * length)
            assert ("log/Total Successes" in info) == (t == k * length)
            if t > 0:
                assert isinstance(rew, float) and "success" in info
    env.close()


def test_success_accounting_with_injected_success():
    """Success fires only in attempt 2: trial keys, totals and 'any' reflect that."""
    env = KEpisodeMetaworld(ML1, k_episodes=3, max_episode_length=6)
    env.reset(seed=0)
    sim = env._sim
    real_step = sim.step
    calls = {"n": 0}

    def fake_step(action):
        obs, rew, term, trunc, info = real_step(action)
        calls["n"] += 1
        # 3rd step of attempt 2 succeeds; the distance falls, then rises again, within each attempt
        distance = [0.5, 0.3, 0.2, 0.4, 0.6, 0.7][(calls["n"] - 1) % 6] + (calls["n"] - 1) // 6
        info = dict(info, success=1.0 if calls["n"] == 9 else 0.0, obj_to_target=distance)
        return obs, rew, term, trunc, info

    sim.step = fake_step
    logs = {}
    for _ in range(18):
        _, _, term, _, info = env.step(env.action_space.sample())
        logs.update({k: v for k, v in info.items() if k.startswith("log/")})
    assert term
    assert logs == pytest.approx(
        {
            "log/Trial 1 Success": 0.0,
            "log/Trial 2 Success": 1.0,
            "log/Trial 3 Success": 0.0,
            "log/Trial 1 Success Fraction": 0.0,
            "log/Trial 2 Success Fraction": 1 / 6,
            "log/Trial 3 Success Fraction": 0.0,
            "log/Trial 1 Min Distance": 0.2,
            "log/Trial 2 Min Distance": 1.2,
            "log/Trial 3 Min Distance": 2.2,
            "log/Total Successes": 1.0,
            "log/Success": 1.0,
        }
    )
    env.close()


def test_sampled_train_goals_are_fresh_in_range_and_repeatable():
    env = KEpisodeMetaworld(ML1, k_episodes=2, max_episode_length=3, train_goals="sampled")
    bench_goals = np.array([pickle.loads(t.data)["rand_vec"] for t in env._tasks])
    space = env._get_sim(ML1)._random_reset_space
    goals = []
    for seed in range(5):
        env.reset(seed=seed)
        goals.append(env._sim._last_rand_vec.copy())
        assert np.all(goals[-1] >= space.low) and np.all(goals[-1] <= space.high)
        assert not np.isclose(bench_goals, goals[-1]).all(axis=1).any()  # not one of the benchmark's 50
        first = env._sim._target_pos.copy()
        for _ in range(3):  # the soft reset between attempts keeps the sampled goal
            env.step(env.action_space.sample())
        np.testing.assert_allclose(env._sim._target_pos, first)
    assert len(np.unique(np.array(goals), axis=0)) == 5
    env.reset(seed=3)
    np.testing.assert_allclose(env._sim._last_rand_vec, goals[3])  # same seed, same goal
    env.close()


def test_test_split_keeps_the_benchmark_goals_and_bad_train_goals_fail():
    env = KEpisodeMetaworld(ML1, split="test", train_goals="sampled")
    env.reset(seed=0)
    bench_goals = np.array([pickle.loads(t.data)["rand_vec"] for t in env._tasks])
    assert np.isclose(bench_goals, env._sim._last_rand_vec).all(axis=1).any()
    env.close()
    with pytest.raises(ValueError, match="'benchmark', 'sampled'"):
        KEpisodeMetaworld(ML1, train_goals="random")


def test_task_index_pins_every_reset_to_one_task():
    env = KEpisodeMetaworld(ML1, split="test", max_episode_length=3, task_index=7)
    assert env.num_tasks == 50
    for seed in range(3):
        env.reset(seed=seed)
        assert env.current_task is env._tasks[7]
    env.close()
    free = KEpisodeMetaworld(ML1, split="test", max_episode_length=3)
    drawn = set()
    for seed in range(6):
        free.reset(seed=seed)
        drawn.add(free._tasks.index(free.current_task))
    assert len(drawn) > 1  # without it, resets draw tasks at random
    free.close()
    with pytest.raises(ValueError, match="task_index must be below 50, the number of reach-v3 test tasks, got 50"):
        KEpisodeMetaworld(ML1, split="test", task_index=50)


def test_success_bonus_is_added_on_successful_steps_only():
    env = KEpisodeMetaworld(ML1, k_episodes=2, max_episode_length=4, success_bonus=2.5)
    env.reset(seed=0)
    real_step = env._sim.step
    sim_rewards = []

    def fake_step(action):  # every other step succeeds
        obs, rew, term, trunc, info = real_step(action)
        sim_rewards.append(rew)
        return obs, rew, term, trunc, dict(info, success=float(len(sim_rewards) % 2 == 0))

    env._sim.step = fake_step
    rewards = [env.step(env.action_space.sample())[1] for _ in range(8)]
    expected = [r + (2.5 if i % 2 == 1 else 0.0) for i, r in enumerate(sim_rewards)]
    assert rewards == pytest.approx(expected)
    assert KEpisodeMetaworld(ML1).success_bonus == 0.0  # the benchmark's own reward by default
    env.close()


@pytest.mark.parametrize("bonus, error", [("10", ConfigTypeError), (True, ConfigTypeError), (-1.0, ValueError)])
def test_bad_success_bonus_names_the_option(bonus, error):
    with pytest.raises(error, match="KEpisodeMetaworld.success_bonus"):
        KEpisodeMetaworld(ML1, success_bonus=bonus)


def test_simulator_truncation_ends_attempt_early():
    env = KEpisodeMetaworld(ML1, k_episodes=2, max_episode_length=10)
    env.reset(seed=0)
    sim = env._sim
    real_step = sim.step

    def truncating_step(action):
        obs, rew, term, trunc, info = real_step(action)
        return obs, rew, term, sim.curr_path_length >= 4, info

    sim.step = truncating_step
    flags, ends = [], []
    for _ in range(8):
        obs, _, term, trunc, info = env.step(np.zeros(4, np.float32))
        flags.append(obs[-1])
        ends.append(term)
        assert not trunc
    assert flags == [0, 0, 0, 1, 0, 0, 0, 0]
    assert ends == [False] * 7 + [True]
    env.close()


def test_full_length_attempts_never_overstep_simulator():
    """max_episode_length=500 coincides with Meta-World's own truncation; no 501st step."""
    env = KEpisodeMetaworld(ML1, k_episodes=2, max_episode_length=500)
    zeros = np.zeros((1000, 4), np.float32)
    steps = run_episode(env, seed=0, actions=zeros)
    assert len(steps) - 1 == 1000
    assert "log/Trial 1 Success" in steps[500][4] and steps[500][0][-1] == 1.0
    assert steps[1000][2] is True
    env.close()


# --------------------------------------------------------------------------- #
# Seeding
# --------------------------------------------------------------------------- #


def test_same_seed_same_rollout_ml1():
    actions = np.random.default_rng(1).uniform(-1, 1, (20, 4)).astype(np.float32)
    a = KEpisodeMetaworld(ML1, k_episodes=2, max_episode_length=10)
    b = KEpisodeMetaworld(ML1, k_episodes=2, max_episode_length=10)
    ra = run_episode(a, seed=7, actions=actions)
    rb = run_episode(b, seed=7, actions=actions)
    for (oa, rwa, *_), (ob, rwb, *_) in zip(ra, rb):
        np.testing.assert_array_equal(oa, ob)
        assert rwa == rwb
    # Reseeding the same instance reproduces the rollout too.
    rc = run_episode(a, seed=7, actions=actions)
    for (oa, rwa, *_), (oc, rwc, *_) in zip(ra, rc):
        np.testing.assert_array_equal(oa, oc)
        assert rwa == rwc
    a.close()
    b.close()


def test_same_seed_same_task_sequence_ml10(ml10):
    a = KEpisodeMetaworld("ml10", split="test", k_episodes=1, max_episode_length=3)
    b = KEpisodeMetaworld("ml10", split="test", k_episodes=1, max_episode_length=3)
    names_a, names_b = [], []
    for env, names in ((a, names_a), (b, names_b)):
        obs, _ = env.reset(seed=123)
        names.append((env.env_name, obs.tobytes()))
        for _ in range(3):  # unseeded resets continue the seeded stream
            obs, _ = env.reset()
            names.append((env.env_name, obs.tobytes()))
    assert names_a == names_b
    a.close()
    b.close()


# --------------------------------------------------------------------------- #
# Caches, gin, the AMAGOEnv factory
# --------------------------------------------------------------------------- #


def test_disk_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("AMAGO_LIKE_CACHE", str(tmp_path))
    monkeypatch.delitem(benchmarks._BENCHMARKS, (ML1, 0), raising=False)
    built = get_benchmark(ML1, seed=0)
    files = list(tmp_path.rglob("*.pkl"))
    assert len(files) == 1 and ML1 in files[0].name

    # A "new process": empty memory cache, and building would fail -> must come from disk.
    monkeypatch.delitem(benchmarks._BENCHMARKS, (ML1, 0))

    def no_build(*args, **kwargs):
        raise AssertionError("benchmark rebuilt although it was cached on disk")

    monkeypatch.setattr(benchmarks, "_build", no_build)
    loaded = get_benchmark(ML1, seed=0)
    assert loaded is not built
    assert [t.data for t in loaded.train_tasks] == [t.data for t in built.train_tasks]
    assert [t.data for t in loaded.test_tasks] == [t.data for t in built.test_tasks]
    monkeypatch.undo()

    # A corrupt file is ignored (with a warning) and rewritten.
    monkeypatch.setenv("AMAGO_LIKE_CACHE", str(tmp_path))
    files[0].write_bytes(b"not a pickle")
    monkeypatch.delitem(benchmarks._BENCHMARKS, (ML1, 0))
    with pytest.warns(UserWarning, match="Ignoring"):
        rebuilt = get_benchmark(ML1, seed=0)
    assert [t.data for t in rebuilt.train_tasks] == [t.data for t in built.train_tasks]
    assert pickle.loads(files[0].read_bytes()).train_tasks[0].data == built.train_tasks[0].data


def test_disk_cache_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("AMAGO_LIKE_CACHE", "off")
    assert benchmarks._disk_cache_path(ML1, 0) is None
    monkeypatch.setenv("AMAGO_LIKE_CACHE", str(tmp_path / "c"))
    assert benchmarks._disk_cache_path(ML1, 0).is_relative_to(tmp_path / "c")


def test_gin_configurable():
    try:
        gin.bind_parameter("KEpisodeMetaworld.k_episodes", 2)
        gin.bind_parameter("KEpisodeMetaworld.max_episode_length", 7)
        env = KEpisodeMetaworld(ML1)
        assert (env.k_episodes, env.max_episode_length) == (2, 7)
    finally:
        gin.clear_config()


def test_metaworld_factory_wraps_in_amago_env():
    wrapper = pytest.importorskip("amago_like.envs.wrapper")
    env = Metaworld(ML1, split="test", k_episodes=2, max_episode_length=5)
    try:
        assert isinstance(env, wrapper.AMAGOEnv)
        assert isinstance(env.unwrapped, KEpisodeMetaworld)
        assert env.unwrapped.split == "test" and env.unwrapped.k_episodes == 2
    finally:
        env.close()


def test_step_info_passes_only_the_chosen_simulator_keys():
    """By default only ``success`` of Meta-World's seven info keys is passed on (each key costs vector
    envs a batching update every step); ``info_keys`` picks others."""
    env = KEpisodeMetaworld(ML1, k_episodes=2, max_episode_length=3)
    steps = run_episode(env, seed=0)
    for t, (*_, info) in enumerate(steps[1:], start=1):
        extra = {k for k in info if k.startswith("log/")}
        assert set(info) - extra == {"success", "attempt"}, t
        assert isinstance(info["success"], float)
    env.close()
    env = KEpisodeMetaworld(ML1, k_episodes=1, max_episode_length=2, info_keys=("near_object", "not-a-key"))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(4, np.float32))
    assert set(info) == {"near_object", "attempt"}
    env.close()
    with pytest.raises(ValueError, match="info_keys"):
        KEpisodeMetaworld(ML1, info_keys="success")


def _write_goal_csv(path, task, attempts):
    """A k-attempt ``_goals.csv`` as ``evaluate --each_goal`` writes it: one row per goal, 0/1 per attempt."""
    lines = ["task,goal,task_index,attempt 1,attempt 2,success,return"]
    lines += [f"{task},{g},{g},0,{a},{float(a)},0.0" for g, a in enumerate(attempts)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_ml1_goals_counts_goals_every_run_and_no_run_reached_and_places_them(ml1_goals, tmp_path, capsys):
    always, never, mixed = [1] * 10, [0] * 15, [1, 0] * 12 + [1]  # 50 goals
    paths = [
        _write_goal_csv(tmp_path / "s0.csv", ML1, always + never + mixed),
        _write_goal_csv(tmp_path / "s1.csv", ML1, always + never + [1 - a for a in mixed]),
    ]
    ml1_goals.main(paths)
    out = capsys.readouterr().out
    assert "reach-v3: 50 test goals x 2 runs" in out
    assert "reached by every run: 10 goals, by none: 15" in out
    x, y, z = pickle.loads(get_benchmark(ML1, 0).test_tasks[30].data)["rand_vec"][-3:]  # goal 30: one run of two
    assert f"  30     0.50  ({x:+.3f}, {y:+.3f}, {z:+.3f})" in out
    # the first attempt of every goal failed, so scoring it finds no goal ever reached
    ml1_goals.main([*paths, "--attempt", "1"])
    assert "reached by every run: 0 goals, by none: 50" in capsys.readouterr().out
    # training goals: placed from the train split, each one's nearest training goal is another one (never itself)
    ml1_goals.main([*paths, "--split", "train"])
    out = capsys.readouterr().out
    x, y, z = pickle.loads(get_benchmark(ML1, 0).train_tasks[30].data)["rand_vec"][-3:]
    assert f"  30     0.50  ({x:+.3f}, {y:+.3f}, {z:+.3f})" in out and "  0.000\n" not in out
    with pytest.raises(SystemExit, match="no 'attempt 3' column"):
        ml1_goals.main([*paths, "--attempt", "3"])
    other = _write_goal_csv(tmp_path / "push.csv", "push-v3", always + never + mixed)
    with pytest.raises(SystemExit, match="one and the same ML1 task"):
        ml1_goals.main([paths[0], other])
