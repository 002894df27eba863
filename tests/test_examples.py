"""The Meta-World example, end to end, with the settings cut down to seconds."""

import json
import os

import numpy as np
import pytest
from helpers import load_example, load_script

from amago_like import CheckpointError
from amago_like.envs.builtin.metaworld import KEpisodeMetaworld

SHORT = [
    "--parallel_actors", "2",
    "--epochs", "1",
    "--gin", "Metaworld.max_episode_length = 20",
    "--gin", "Experiment.train_timesteps_per_epoch = 60",
    "--gin", "Experiment.val_timesteps_per_epoch = 60",
    "--gin", "Experiment.train_batches_per_epoch = 3",
    "--gin", "Experiment.max_seq_len = 16",
]  # fmt: skip


@pytest.fixture(scope="module")
def example():
    return load_example("metaworld")


@pytest.mark.parametrize(
    "bench, test_tasks",  # not "benchmark": the pytest-benchmark plugin owns that fixture name
    [
        ("reach-v3", {"reach-v3"}),
        ("ml10", {"drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"}),
    ],
)
def test_metaworld_example_writes_checkpoint_metrics_and_per_task_success(example, tmp_path, bench, test_tasks):
    metrics = example.main(["--benchmark", bench, "--buffer_dir", str(tmp_path), "--run_name", "mw", *SHORT])
    run = tmp_path / "mw"
    assert (run / "ckpts" / "training_states" / "epoch_1" / "state.pt").exists()
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert rows and rows[-1]["epoch"] == 1
    # 2 actors x 60 steps = 2 meta-episodes of 3 attempts x 20 steps, on held-out tasks, tagged by task name
    tasks = {k.split("/")[1] for k in metrics if k.startswith("val/") and k.endswith("/Success") and k.count("/") == 2}
    assert tasks and tasks <= test_tasks
    for task in tasks:
        for key in ("Trial 1 Success", "Trial 3 Success", "Total Successes", "return"):
            assert f"val/{task}/{key}" in metrics
    assert len(os.listdir(run / "buffer" / "fifo")) == 2
    assert f"Metaworld.benchmark_name = '{bench}'" in (run / "config.gin").read_text()


def test_evaluate_reads_the_env_and_benchmark_from_the_run(example, tmp_path, capsys, monkeypatch):
    from amago_like import evaluate

    example.main(["--benchmark", "push-v3", "--buffer_dir", str(tmp_path), "--run_name", "mw", *SHORT])
    capsys.readouterr()
    metrics = evaluate.main([str(tmp_path / "mw"), "--split", "test", "--episodes", "1"])
    assert "test/push-v3/Success" in metrics  # the run's env and task, though neither --env nor --benchmark was given
    out = capsys.readouterr().out
    assert "on the test split, 1 meta-episodes" in out and "per attempt: 1 " in out
    evaluate.main([str(tmp_path / "mw"), "--env", "metaworld", "--split", "test", "--episodes", "1", "--epoch", "1"])
    assert "mw (epoch 1) on the test split" in capsys.readouterr().out
    saved = tmp_path / "demos"
    evaluate.main(
        [
            str(tmp_path / "mw"),
            "--env",
            "metaworld",
            "--episodes",
            "1",
            "--average",
            "0:4",
            "--save_trajs_to",
            str(saved),
        ]
    )
    assert "mw (weights of epochs 0-4 averaged) on the" in capsys.readouterr().out
    assert [f.suffix for f in saved.rglob("*") if f.is_file()][:1] == [".npz"]  # the evaluated meta-episodes
    demos, played = tmp_path / "each", []
    reset = KEpisodeMetaworld.reset
    monkeypatch.setattr(
        KEpisodeMetaworld, "reset", lambda env, **kw: (played.append(env.task_index), reset(env, **kw))[1]
    )
    evaluate.main(
        [str(tmp_path / "mw"), "--env", "metaworld", "--split", "test", "--each_goal", "--save_trajs_to", str(demos)]
    )
    assert "50 meta-episodes (each task once, k-attempt protocol)" in capsys.readouterr().out
    assert {i for i in played if i is not None} == set(range(50))  # 50 actors, each pinned to its own task
    assert len(list(demos.rglob("*.npz"))) == 50
    with pytest.raises(SystemExit):  # argparse: the toy envs have no task list to cover
        evaluate.main([str(tmp_path / "mw"), "--env", "dark_room", "--each_goal"])
    assert "--each_goal is for Meta-World runs" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"no weights saved for epochs 5-9 in .*saved epochs: \[1\]"):
        evaluate.main([str(tmp_path / "mw"), "--env", "metaworld", "--episodes", "1", "--average", "5:9"])
    with pytest.raises(SystemExit):  # argparse: FIRST is after LAST
        evaluate.main([str(tmp_path / "mw"), "--env", "metaworld", "--average", "4:0"])
    assert "FIRST is after LAST" in capsys.readouterr().err
    metrics = evaluate.main(
        [str(tmp_path / "mw"), "--env", "metaworld", "--episodes", "1", "--gin", "Metaworld.k_episodes = 2"]
    )
    assert "test/Trial 2 Success" in metrics and "test/Trial 3 Success" not in metrics  # the binding won
    with pytest.raises(CheckpointError, match="no checkpoint at .*policy_epoch_7.pt"):
        evaluate.main([str(tmp_path / "mw"), "--env", "metaworld", "--episodes", "1", "--epoch", "7"])
    with pytest.raises(
        SystemExit, match=r"(?s)bad gin binding 'Metaworld.k_episode = 2'.*did you mean Metaworld.k_episodes\?"
    ):
        evaluate.main([str(tmp_path / "mw"), "--env", "metaworld", "--gin", "Metaworld.k_episode = 2"])
    with pytest.raises(SystemExit, match=r"nowhere/config.gin not found; run_dir must be a run folder"):
        evaluate.main([str(tmp_path / "nowhere"), "--env", "metaworld"])


def test_unknown_benchmark_fails_before_any_work(example, tmp_path, capsys):
    with pytest.raises(SystemExit, match="Unknown Meta-World benchmark 'ml11'.*ml10"):
        example.main(["--benchmark", "ml11", "--buffer_dir", str(tmp_path)])
    assert not os.listdir(tmp_path)


def test_bad_gin_binding_fails_with_its_name(example, tmp_path):
    with pytest.raises(SystemExit, match="Experiment.epocs"):
        example.main(["--benchmark", "reach-v3", "--buffer_dir", str(tmp_path), "--gin", "Experiment.epocs = 2"])


@pytest.mark.parametrize("fmt", ["npz", "npz-compressed", "traj"])
def test_add_success_bonus_relabels_a_buffer_in_place(tmp_path, fmt):
    from amago_like.data import Trajectory, load_trajectory, save_trajectory

    tool = load_script(os.path.join("benchmarks", "learning", "add_success_bonus.py"), "add_success_bonus")
    rews = np.array([[1.0], [10.0], [9.99], [10.0]], dtype=np.float32)  # steps 2 and 4 succeeded
    rl2s = np.zeros((5, 2), dtype=np.float32)
    rl2s[0, 0] = 10.0  # a segment that continues a successful step
    rl2s[1:, 0] = rews[:, 0]
    traj = Trajectory(
        obs={"x": np.arange(5, dtype=np.float32)[:, None]},
        rl2s=rl2s,
        time_idxs=np.arange(5)[:, None],
        actions=np.zeros((4, 1), dtype=np.float32),
        rews=rews,
        dones=np.zeros((4, 1), dtype=bool),
    )
    folder = tmp_path / "run" / "buffer" / "fifo"
    folder.mkdir(parents=True)
    path = save_trajectory(traj, str(folder), "reach-v3", fmt)
    assert tool.file_format(path) == fmt
    assert tool.add_bonus(str(tmp_path / "run"), 5.0, 10.0) == (4, 2)
    after = load_trajectory(path)
    np.testing.assert_array_equal(after.rews[:, 0], np.float32([1.0, 15.0, 9.99, 15.0]))
    np.testing.assert_array_equal(after.rl2s[:, 0], np.float32([15.0, 1.0, 15.0, 9.99, 15.0]))
    assert os.listdir(folder) == [os.path.basename(path)] and tool.file_format(path) == fmt
    with pytest.raises(SystemExit, match="already has rewards above 10.0: was the bonus added before"):
        tool.add_bonus(str(tmp_path / "run"), 5.0, 10.0)


def test_end_to_end_rates_each_epoch_after_the_first_from_the_logged_wall_clock():
    bench = load_script(os.path.join("benchmarks", "end_to_end.py"), "end_to_end")
    rows = [{"wall_seconds": w} for w in (9.0, 12.0, 16.0, 18.0)]  # a slow first epoch, then 3 s per epoch
    assert bench.steady_epoch_seconds(rows) == pytest.approx(3.0)
    assert np.isnan(bench.steady_epoch_seconds(rows[:1]))
    # after the first epoch: 2 + 1 s collecting, 1 + 3 s learning; perfect overlap leaves 2 + 3 s of the 7
    rows = [{"collect_seconds": c, "learn_seconds": lr} for c, lr in ((9.0, 9.0), (2.0, 1.0), (1.0, 3.0))]
    assert bench.phase_seconds(rows) == pytest.approx((3.0, 4.0, 5.0))
