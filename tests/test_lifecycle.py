"""Run lifecycle: kill and resume, actor/learner split, numerical guards, checkpoint retention, early stop."""

import json
import os
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import torch

from amago_like import DiskTrajDataset, Experiment, MetaBandit
from amago_like.callbacks import EarlyStopping
from amago_like.cli import REPO_ROOT, apply_gin
from amago_like.data import EmptyDatasetError, load_trajectory
from amago_like.experiment import DivergenceError
from amago_like.logging import read_metrics
from amago_like.threads import THREAD_ENV_VARS, automatic_threads

BANDIT = os.path.join(REPO_ROOT, "examples", "toy.py")
FAST = ["--gin", "Experiment.train_batches_per_epoch = 10", "--gin", "Experiment.val_interval = 100"]


def bandit_cmd(buffer_dir, *extra):
    return [sys.executable, BANDIT, "--buffer_dir", str(buffer_dir), "--run_name", "life", *FAST, *extra]


def rows(path):
    return [json.loads(line) for line in open(path)]


def small_experiment(root, **overrides) -> Experiment:
    apply_gin([os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")], [])
    kwargs = dict(
        run_name="run", ckpt_base_dir=str(root), max_seq_len=7, dataset=DiskTrajDataset(str(root), "run"),
        make_train_env=MetaBandit, make_val_env=MetaBandit, val_timesteps_per_epoch=6, parallel_actors=2,
        env_mode="sync", epochs=3, train_timesteps_per_epoch=12, train_batches_per_epoch=3, batch_size=4,
        val_interval=1, ckpt_interval=1, verbose=False, seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return Experiment(**kwargs)


def test_sigkill_then_resume_keeps_counters_and_every_trajectory(tmp_path):
    run = tmp_path / "life"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # rows every 3 of the 10 batches of an epoch: a kill mid-epoch leaves rows of an epoch without a checkpoint
    every3 = ["--gin", "Experiment.log_interval = 3"]
    proc = subprocess.Popen(bandit_cmd(tmp_path, "--epochs", "6", "--gin", "Experiment.ckpt_interval = 1", *every3),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    target = run / "ckpts" / "training_states" / "epoch_2" / "state.pt"
    deadline = time.time() + 120

    def mid_epoch_3() -> bool:
        return (run / "metrics.jsonl").exists() and any(  # (read_metrics skips a line being written)
            r.get("epoch") == 3 and "epoch_seconds" not in r for r in read_metrics(str(run / "metrics.jsonl"))
        )

    while not (target.exists() and mid_epoch_3()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run never reached its second checkpoint"
    assert mid_epoch_3(), "the run was not killed after rows of epoch 3 were logged"
    # a writer killed mid-save leaves at most a hidden .tmp file, which readers never list
    visible = [f for f in os.listdir(run / "buffer" / "fifo") if not f.startswith(".")]
    before = {f: load_trajectory(str(run / "buffer" / "fifo" / f)) for f in visible}
    assert before
    killed_at = max(r["epoch"] for r in rows(run / "metrics.jsonl"))

    done = subprocess.run(bandit_cmd(tmp_path, "--epochs", "6", "--resume", *every3), env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from epoch" in done.stdout
    after = rows(run / "metrics.jsonl")
    # one timeline: steps never go back, and only the final evaluation repeats a step (the last epoch's)
    steps = [r["step"] for r in after]
    assert steps == sorted(steps) and len(set(steps[:-1])) == len(steps) - 1, steps
    epochs = [r for r in after if "epoch_seconds" in r]  # one row per trained epoch (not the final evaluation)
    resumed = [r for r in epochs if r["epoch"] > killed_at]
    assert after[-1]["epoch"] == 6 and resumed
    # counters only move forward and the last one counts every epoch exactly once
    assert all(a["grad_updates"] < b["grad_updates"] for a, b in zip(resumed, resumed[1:]))
    assert epochs[-1]["grad_updates"] == after[-1]["grad_updates"] == 6 * 10
    # nothing written before the kill is lost or damaged
    fifo = set(os.listdir(run / "buffer" / "fifo"))
    assert set(before) <= fifo
    for name, traj in before.items():
        np.testing.assert_array_equal(load_trajectory(str(run / "buffer" / "fifo" / name)).actions, traj.actions)
    assert not [n for n in os.listdir(run / "ckpts" / "training_states") if n.endswith(".tmp")]


def test_actor_learner_split_shares_buffer_and_policy(tmp_path):
    run = tmp_path / "life"
    # torch's thread count left to the roles (a learner and a collector at torch's default stalled on 2 cores)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV_VARS}
    # the learner starts first and waits for the collector's data
    learner = subprocess.Popen(bandit_cmd(tmp_path, "--mode", "learn", "--epochs", "3"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = subprocess.run(bandit_cmd(tmp_path, "--mode", "collect", "--epochs", "4"), env=env,
                           capture_output=True, text=True, timeout=240)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    out, err = learner.communicate(timeout=240)
    assert learner.returncode == 0, err[-2000:]
    assert "1 torch thread(s)" in first.stdout
    assert f"{automatic_threads('learn')} torch thread(s)" in out
    # a collector started after the learner published its policy acts with it
    second = subprocess.run(bandit_cmd(tmp_path, "--mode", "collect", "--epochs", "2"), env=env,
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]

    learned = rows(run / "metrics.jsonl")
    assert learned[-1]["grad_updates"] == 3 * 10
    # the learner's frames: what had reached the buffer (whole 6-step episodes) when it trained
    assert 0 < learned[-1]["total_frames"] <= 4 * 240 and learned[-1]["total_frames"] % 6 == 0
    assert sum("learn/critic_loss" in r for r in learned) == 3
    collected = rows(run / "metrics_collect.jsonl")
    assert [r["total_frames"] for r in collected] == [240, 480, 720, 960, 240, 480]  # 30 steps x 8 actors
    assert all(r["grad_updates"] == 0 for r in collected)
    assert [r["latest_policy_loaded"] for r in collected[-2:]] == [1.0, 1.0]
    assert (run / "ckpts" / "latest" / "policy.pt").exists()
    assert (run / "ckpts" / "training_states" / "epoch_3" / "state.pt").exists()  # only the learner checkpoints


def test_a_learner_counts_the_frames_its_buffer_received(tmp_path):
    collector = small_experiment(tmp_path, role="collect", epochs=1, val_interval=None)
    learner = small_experiment(tmp_path, role="learn", epochs=1, val_interval=None)
    collector.start()
    learner.start()
    assert (collector.train_envs.num_envs, learner.train_envs.num_envs) == (2, 1)  # the learner's never steps
    assert collector.optimizer is None and learner.optimizer is not None  # a collector never trains
    collector.learn()  # 2 actors x 12 steps: four whole 6-step episodes
    learner.learn()
    assert learner.total_frames == 24
    collector.epochs = learner.epochs = 2
    collector.learn()
    learner.learn()
    assert learner.total_frames == 48
    assert [r["total_frames"] for r in rows(tmp_path / "run" / "metrics.jsonl")] == [24, 48]
    learner.close()
    resumed = small_experiment(tmp_path, role="learn", epochs=3, val_interval=None)
    resumed.start()
    resumed.load_latest_checkpoint()
    collector.epochs = 3
    collector.learn()
    resumed.learn()  # goes on from the checkpoint's count, not from the files on disk
    assert resumed.total_frames == 72
    resumed.close()
    collector.close()


def test_a_collector_has_no_optimizer_and_resumes_from_a_learners_checkpoint(tmp_path):
    collector = small_experiment(tmp_path, role="collect", epochs=1, val_interval=None)
    learner = small_experiment(tmp_path, role="learn", epochs=1, val_interval=None)
    collector.start()
    learner.start()
    collector.learn()
    learner.learn()  # its checkpoint of epoch 1 holds an optimizer state
    collector.close()
    with pytest.raises(RuntimeError, match="only acts"):
        collector.learner.train_step(None, collector.compute_loss)
    resumed = small_experiment(tmp_path, role="collect", epochs=2, val_interval=None)
    resumed.start()
    assert resumed.load_latest_checkpoint() == 1
    assert (resumed.epoch, resumed.grad_updates, resumed.optimizer) == (1, learner.grad_updates, None)
    for mine, theirs in zip(resumed.policy.state_dict().values(), learner.policy.state_dict().values()):
        assert torch.equal(mine, theirs)
    resumed.close()
    learner.close()


def test_a_learner_that_never_gets_data_stops_saying_where_it_waited(tmp_path):
    exp = small_experiment(tmp_path, role="learn", wait_for_data_seconds=0)
    exp.start()
    try:
        with pytest.raises(EmptyDatasetError) as err:
            exp.learn()
    finally:
        exp.close()
    message = str(err.value)
    assert "the learner waited 0 s (Experiment.wait_for_data_seconds) at epoch 0" in message
    assert str(tmp_path / "run" / "buffer") in message and "--mode collect" in message
    assert exp.grad_updates == 0 and exp.checkpoint_epochs() == []


def test_a_learner_that_has_trained_warns_of_an_epoch_without_data(tmp_path):
    exp = small_experiment(tmp_path, role="learn", wait_for_data_seconds=0)
    exp.start()
    exp.learner.grad_updates = 5  # trained before (e.g. resumed), and its buffer is gone since
    with pytest.warns(RuntimeWarning, match=r"waited 0 s .* at epoch 0 for data in vain: this epoch makes no updates"):
        metrics = exp.learn_epoch()
    assert metrics == {"learn/epoch_without_data": 1.0} and exp.grad_updates == 5
    exp.close()


def test_non_finite_updates_are_skipped_counted_then_stop_the_run(tmp_path):
    exp = small_experiment(tmp_path, max_bad_updates_in_a_row=1000)
    exp.start()
    exp.collect_new_training_data()
    before = [p.detach().clone() for p in exp.policy.parameters()]
    exp.policy.reward_multiplier = float("nan")
    metrics = exp.learn_epoch()
    assert exp.bad_updates == 3 and exp.grad_updates == 0 and metrics["learn/bad_updates"] >= 1
    for b, p in zip(before, exp.policy.parameters()):
        assert torch.equal(b, p), "a skipped update changed the weights"
    exp.close()

    exp = small_experiment(tmp_path / "b", max_bad_updates_in_a_row=2)
    exp.start()
    exp.policy.reward_multiplier = float("nan")
    with pytest.raises(DivergenceError, match="2 updates in a row"):
        exp.learn()
    assert exp.checkpoint_epochs() == []
    exp.close()


def test_keep_checkpoints_prunes_the_oldest(tmp_path):
    exp = small_experiment(tmp_path, keep_checkpoints=2, epochs=4, val_interval=None)
    exp.start()
    exp.learn()
    assert exp.checkpoint_epochs() == [3, 4]
    assert sorted(os.listdir(tmp_path / "run" / "ckpts" / "policy_weights")) == [
        "policy_epoch_3.pt",
        "policy_epoch_4.pt",
    ]
    exp.close()
    with pytest.raises(ValueError, match="keep_checkpoints"):
        small_experiment(tmp_path, keep_checkpoints=0)


def test_early_stopping_ends_the_run_and_checkpoints(tmp_path):
    stopper = EarlyStopping(metric="val/return", patience=1, mode="min")  # returns rarely fall: stops quickly
    exp = small_experiment(tmp_path, epochs=50, ckpt_interval=100, callbacks=(stopper,))
    exp.start()
    exp.learn()
    assert exp.epoch < 50
    assert exp.checkpoint_epochs() == [exp.epoch]
    exp.close()


def test_early_stopping_rule():
    stop = EarlyStopping(metric="m", patience=2, mode="max")
    assert [stop.on_epoch_end(None, {"m": v}) for v in (1.0, 2.0, 1.5, 1.9)] == [False, False, False, True]
    assert not stop.on_epoch_end(None, {})


def test_resume_with_new_bindings_keeps_the_earlier_config(tmp_path):
    from amago_like.cli import run

    run(small_experiment(tmp_path, epochs=2))
    config = tmp_path / "run" / "config.gin"
    first = config.read_text()
    assert "Agent.tau = 0.005" in first

    run(small_experiment(tmp_path, epochs=3), resume=True)  # same bindings: nothing extra is written
    assert config.read_text() == first
    assert sorted(p.name for p in config.parent.glob("config*.gin")) == ["config.gin"]

    gin.bind_parameter("Agent.tau", 0.01)
    run(small_experiment(tmp_path, epochs=4), resume=True)
    assert "Agent.tau = 0.01" in config.read_text()
    assert (tmp_path / "run" / "config.until_epoch_3.gin").read_text() == first


def test_resume_sets_aside_the_metrics_of_epochs_it_redoes(tmp_path):
    from amago_like.cli import run

    run(small_experiment(tmp_path, epochs=4, ckpt_interval=2))
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    # as if killed during epoch 4: its checkpoint never landed and the last line was cut short
    state_dir = run_dir / "ckpts" / "training_states" / "epoch_4"
    for f in state_dir.iterdir():
        f.unlink()
    state_dir.rmdir()
    first = rows(metrics)
    with open(metrics, "a") as f:
        f.write('{"step": 99, "epo')

    run(small_experiment(tmp_path, epochs=4, ckpt_interval=2), resume=True)
    trained = [r["epoch"] for r in rows(metrics) if "epoch_seconds" in r]
    assert trained == [1, 2, 3, 4]  # one timeline: epochs 3 and 4 once, from the resumed run
    aside = (run_dir / "metrics.after_epoch_2.jsonl").read_text().splitlines()
    assert aside[-1] == '{"step": 99, "epo'  # the cut line is kept, not dropped
    assert sorted(json.loads(line)["epoch"] for line in aside[:-1]) == sorted(
        r["epoch"] for r in first if r["epoch"] > 2
    )
