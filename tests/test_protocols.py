"""The evaluation protocols (amago_like/protocols.py) on a toy task list with known answers: scripted policies
that always succeed, never do, succeed from the second attempt on, or only on one task; every goal played once."""

import csv
import functools
import os

import gin
import gymnasium as gym
import numpy as np
import pytest
import torch

from amago_like import DiskTrajDataset, Experiment, evaluate
from amago_like.cli import REPO_ROOT, apply_gin
from amago_like.protocols import Protocol, run_protocol

# (task, steps per attempt): the short task's meta-episodes end first, so an evaluation keeping the first
# meta-episodes to finish would count its goals again before the long task's are done
TASKS = [("short", 2), ("short", 2), ("long", 5), ("long", 5), ("long", 5)]


class TaskList(gym.Env):
    """k attempts of one of TASKS; an attempt succeeds if the agent pulls lever 1 at any step of it.
    Observation: (attempt, 1 on the long task)."""

    def __init__(self, split: str = "test", k_episodes: int = 3, task_index: int | None = None):
        self.num_tasks, self.k, self.task_index = len(TASKS), k_episodes, task_index
        self.observation_space = gym.spaces.Box(0.0, 100.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self):
        return np.array([self.attempt, float(self.env_name == "long")], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        i = self.task_index if self.task_index is not None else int(self.np_random.integers(self.num_tasks))
        self.env_name, self.length = TASKS[i]
        self.attempt, self.t, self.succeeded = 1, 0, False
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.succeeded |= int(action) == 1
        info, terminated = {}, False
        if self.t == self.length:
            info[f"log/Trial {self.attempt} Success"] = float(self.succeeded)
            terminated = self.attempt == self.k
            self.attempt, self.t, self.succeeded = self.attempt + 1, 0, False
        return self._obs(), float(action), terminated, False, info


gin.external_configurable(TaskList)  # so that evaluate can name it in a run's config.gin


class Scripted:
    """A policy acting from the observation: lever 1 when ``succeeds(attempt, on_long_task)``."""

    def __init__(self, succeeds):
        self.succeeds = succeeds

    def init_hidden_state(self, n, device):
        return None

    def reset_hidden_state(self, hidden, done):
        return hidden

    def get_actions(self, obs, rl2s, time_idxs, hidden, sample=True, averaged=False):
        attempt, long = obs["observation"][:, -1, 0], obs["observation"][:, -1, 1]
        return torch.tensor([int(self.succeeds(int(a), bool(x))) for a, x in zip(attempt, long)]), hidden

    def eval(self):
        return self

    train = eval


def play(protocol, succeeds, max_actors=None, seed=0):
    return run_protocol(protocol, lambda rollout: Scripted(succeeds), TaskList, len(TASKS), torch.device("cpu"),
                        seed=seed, max_actors=max_actors)  # fmt: skip


K_ATTEMPT, METAWORLD = Protocol("k-attempt"), Protocol("metaworld", adaptation_episodes=1, evaluation_episodes=2)


@pytest.mark.parametrize("protocol", [K_ATTEMPT, METAWORLD])
@pytest.mark.parametrize("succeeds, expected", [(lambda a, long: True, 1.0), (lambda a, long: False, 0.0)])
def test_a_policy_that_always_or_never_succeeds_scores_one_or_zero(protocol, succeeds, expected):
    result = play(protocol, succeeds)
    assert result.success() == expected
    assert result.task_success() == {"short": expected, "long": expected}
    assert np.all(result.attempt_matrix() == expected)
    metrics = result.metrics("test")
    assert metrics["test/Success"] == expected and metrics["test/long/Trial 1 Success"] == expected


def test_every_goal_is_played_exactly_once_however_short_its_episodes():
    for max_actors in (None, 2):  # all goals at once, or two at a time
        result = play(K_ATTEMPT, lambda a, long: True, max_actors)
        assert [(g.task, g.goal, g.task_index) for g in result.goals] == [
            ("short", 0, 0), ("short", 1, 1), ("long", 0, 2), ("long", 1, 3), ("long", 2, 4),
        ]  # fmt: skip
        assert [ep.length for ep in result.episodes] == [6, 6, 15, 15, 15]  # 3 attempts each


def test_only_the_counted_meta_episodes_are_saved(tmp_path):
    """The short task's actors finish more meta-episodes while the long task's play their first; only each
    actor's first (the counted ones) is written, and no staging folder is left."""
    from amago_like.data.trajectory import load_trajectory

    out = tmp_path / "trajs"
    for max_actors in (None, 2):
        result = run_protocol(K_ATTEMPT, lambda rollout: Scripted(lambda a, long: True), TaskList, len(TASKS),
                              torch.device("cpu"), seed=0, max_actors=max_actors, save_trajs_to=str(out))  # fmt: skip
        names = sorted(os.listdir(out))
        assert len(names) == 5 and len(result.goals) == 5 and not any(n.startswith(".") for n in names)
        assert sorted(len(load_trajectory(str(out / n)).actions) for n in names) == [6, 6, 15, 15, 15]
        for n in names:
            os.remove(out / n)


def test_a_policy_that_succeeds_from_the_second_attempt_shows_it_per_attempt():
    from_second = lambda attempt, long: attempt >= 2  # noqa: E731
    k = play(K_ATTEMPT, from_second)
    assert k.attempt_matrix().tolist() == [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    assert k.success() == 1.0  # success in any attempt
    assert [k.metrics()[f"test/Trial {i} Success"] for i in (1, 2, 3)] == [0.0, 1.0, 1.0]
    # Meta-World's protocol scores only the attempts after the adaptation ones
    assert play(METAWORLD, from_second).success() == 1.0
    assert play(Protocol("metaworld", 0, 3), from_second).success() == pytest.approx(2 / 3)
    assert play(Protocol("metaworld", 1, 3), from_second).num_attempts == 4  # the env was built with k = 1 + 3


def test_every_task_weighs_the_same_whatever_its_number_of_goals():
    only_short = lambda attempt, long: not long  # noqa: E731
    result = play(METAWORLD, only_short)
    assert result.task_success() == {"short": 1.0, "long": 0.0}
    assert result.success() == 0.5  # 2 of 5 goals succeed, but each task counts once


def test_the_success_matrix_is_written_as_csv_and_a_heatmap(tmp_path):
    result = play(METAWORLD, lambda attempt, long: attempt >= 3 or not long)
    paths = result.write(str(tmp_path), "metaworld_test")
    assert [os.path.basename(p) for p in paths] == [
        "metaworld_test.csv",
        "metaworld_test_goals.csv",
        "metaworld_test.png",
    ]
    rows = list(csv.reader(open(paths[0])))
    assert rows == [
        ["task", "goals", "attempt 1", "attempt 2", "attempt 3", "success"],
        ["short", "2", "1.0000", "1.0000", "1.0000", "1.0000"],
        ["long", "3", "0.0000", "0.0000", "1.0000", "0.5000"],
        ["mean over tasks", "5", "0.5000", "0.5000", "1.0000", "0.7500"],
    ]
    goals = list(csv.reader(open(paths[1])))
    assert goals[0] == ["task", "goal", "task_index", "attempt 1", "attempt 2", "attempt 3", "success", "return"]
    assert goals[3][:7] == ["long", "0", "2", "0", "0", "1", "0.5"]
    assert open(paths[2], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_protocol_arguments_fail_with_one_line():
    with pytest.raises(ValueError, match="unknown protocol 'k_attempt'; choose one of k-attempt, metaworld"):
        Protocol("k_attempt")
    with pytest.raises(ValueError, match="pass --adaptation_episodes 0 or more and --evaluation_episodes 1 or more"):
        Protocol("metaworld", 2, 0)
    with pytest.raises(ValueError, match="adaptation and evaluation episodes are the metaworld protocol's"):
        Protocol.named("k-attempt", 3)
    assert Protocol.named("metaworld") == Protocol("metaworld", 10, 3)  # Meta-World's own counts


def test_evaluate_runs_a_protocol_on_a_run_and_writes_its_matrix(tmp_path, capsys):
    apply_gin([os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")], [])
    exp = Experiment(
        run_name="run", ckpt_base_dir=str(tmp_path), max_seq_len=16, dataset=DiskTrajDataset(str(tmp_path), "run"),
        make_train_env=functools.partial(TaskList, split="train"), make_val_env=TaskList, val_timesteps_per_epoch=15,
        parallel_actors=2, env_mode="sync", epochs=1, train_timesteps_per_epoch=15, train_batches_per_epoch=2,
        batch_size=2, val_interval=None, verbose=False, seed=0,
    )  # fmt: skip
    exp.learn()
    exp.close()
    gin.clear_config()
    run = str(tmp_path / "run")
    metrics = evaluate.main([run, "--split", "test", "--protocol", "metaworld", "--adaptation_episodes", "1",
                             "--evaluation_episodes", "1", "--max_actors", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "5 meta-episodes (each task once, metaworld protocol)" in out
    assert "success in the 1 evaluation episodes after 1 adaptation episodes: " in out
    assert metrics["test/goals"] == 5 and "test/Trial 2 Success" in metrics and "test/Trial 3 Success" not in metrics
    assert sorted(os.listdir(os.path.join(run, "eval"))) == [
        "metaworld_test.csv", "metaworld_test.png", "metaworld_test_goals.csv",
    ]  # fmt: skip
    evaluate.main([run, "--each_goal", "--epoch", "1", "--out", str(tmp_path / "elsewhere")])
    assert (tmp_path / "elsewhere" / "k-attempt_train_epoch1.csv").exists()
    with pytest.raises(SystemExit):
        evaluate.main([run, "--adaptation_episodes", "2"])
    assert "--adaptation_episodes and --evaluation_episodes are for --protocol metaworld" in capsys.readouterr().err


def test_the_metaworld_protocol_sets_the_attempts_of_meta_worlds_env():
    pytest.importorskip("metaworld")
    from amago_like import Metaworld

    make = functools.partial(Metaworld, "reach-v3", split="test", max_episode_length=5)
    result = run_protocol(Protocol("metaworld", 2, 1), lambda rollout: Zeros(), make, 2, torch.device("cpu"))
    assert [(g.task, g.goal, len(g.attempts)) for g in result.goals] == [("reach-v3", 0, 3), ("reach-v3", 1, 3)]
    assert [ep.length for ep in result.episodes] == [15, 15]


class Zeros(Scripted):
    def __init__(self):
        pass

    def get_actions(self, obs, rl2s, time_idxs, hidden, sample=True, averaged=False):
        return torch.zeros(len(obs["observation"]), 4), hidden
