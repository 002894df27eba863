"""Issue 22: collect while learning (--overlap). The replay-ratio arithmetic without processes, the refusals, and
overlapped toy runs: the same env steps and updates as the sequential run, weights handed over while running,
a failing collector stopping the learner, and a killed learner's collector stopping by itself."""

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import process_gone

from amago_like import DiskTrajDataset, Experiment, MetaBandit
from amago_like.cli import REPO_ROOT
from amago_like.data.trajectory import Trajectory, count_transitions, save_trajectory
from amago_like.overlap import (
    INDEX_ENV,
    PARENT_ENV,
    OverlapFeed,
    OverlapFiles,
    Pace,
    PacedCollector,
    read_json,
    report_frames,
    reported_frames,
    run_files,
    run_seed,
    write_json,
)

BANDIT = os.path.join(REPO_ROOT, "examples", "toy.py")
SMALL = ["--epochs", "3", "--gin", "Experiment.train_batches_per_epoch = 10", "--gin", "Experiment.val_interval = 100",
         "--gin", "Experiment.ckpt_interval = 1", "--seed", "0"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rows(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def sequential_pace(epochs=4, steps=30, actors=8, batches=10, learning_from=0) -> Pace:
    args = dict(train_timesteps_per_epoch=steps, parallel_actors=actors, train_batches_per_epoch=batches,
                epochs=epochs, overlap_updates_per_env_step=None, start_learning_at_epoch=learning_from)  # fmt: skip
    return Pace.of(args)


# ------------------------------------------------------------------ the replay ratio, without processes
def test_the_default_ratio_is_the_sequential_schedules():
    pace = sequential_pace()
    assert pace.ratio == Fraction(10, 240) and pace.frames == 4 * 240 and pace.updates == 4 * 10
    assert [pace.frames_needed(u) for u in (1, 10, 11, 40)] == [24, 240, 264, 960]
    # an epoch ahead of the updates done, no further; never past the budget
    assert pace.may_step(239, 0) and not pace.may_step(240, 0)
    assert pace.may_step(479, 10) and not pace.may_step(480, 10)
    assert not pace.may_step(960, 40) and pace.may_step(950, 40)
    late = sequential_pace(learning_from=2)  # learning starts after two epochs of env steps, as sequentially
    assert late.updates == 20 and late.frames_needed(1) == 480 + 24 and late.frames_needed(20) == 960
    assert late.may_step(719, 0) and not late.may_step(720, 0)


@pytest.mark.parametrize("ratio", [None, 0.001, 0.01, 1.0])
@pytest.mark.parametrize("chunk", [1, 3, 30])
def test_learner_and_collector_never_wait_for_each_other_forever(ratio, chunk):
    """Whatever the ratio and chunk size, one of the two can always go on until both budgets are spent, and no
    update runs before its env steps were taken (the ratio holds)."""
    args = dict(train_timesteps_per_epoch=30, parallel_actors=8, train_batches_per_epoch=10, epochs=4,
                overlap_updates_per_env_step=ratio, start_learning_at_epoch=0)  # fmt: skip
    pace = Pace.of(args)
    frames = updates = 0
    while frames < pace.frames or updates < pace.updates:
        collector_can = pace.may_step(frames, updates)
        learner_can = updates < pace.updates and frames >= pace.frames_needed(updates + 1)
        assert collector_can or learner_can, (frames, updates)
        if learner_can:
            updates += 1
        if collector_can:
            frames = min(frames + chunk * 8, pace.frames)
    assert (frames, updates) == (pace.frames, pace.updates)


def test_the_learner_follows_the_collectors_env_steps_and_exploration_schedule(tmp_path):
    """The learner's total_frames are what the collector reported, and its idle rollout carries the collector's
    exploration schedule (env steps per actor), which its checkpoints save and a resumed collector loads."""
    rollout = SimpleNamespace(explores=True, num_envs=1, explore_steps=0)  # the learner's one idle env
    learner = SimpleNamespace(dataset=DiskTrajDataset(str(tmp_path), "run"), run_dir=str(tmp_path / "run"),
                              grad_updates=30, bad_updates=2, total_frames=100, train_rollout=rollout,
                              parallel_actors=8, overlap_collectors=2)  # fmt: skip
    feed = OverlapFeed(learner, sequential_pace(), publish_every=5)
    assert feed.updates == 32 and json.load(open(feed.files.learner))["updates"] == 32  # told at once
    assert feed.frames(100) == 100 and rollout.explore_steps == 0  # nothing reported yet
    write_json(feed.files.collector, {"frames": 480})
    assert feed.frames(100) == 480 and learner.total_frames == 480 and rollout.explore_steps == 30
    write_json(OverlapFiles(learner.run_dir, 1).collector, {"frames": 400})  # the second collector's, summed
    assert feed.frames(100) == 880 and learner.total_frames == 880 and rollout.explore_steps == 55


def test_a_learner_that_stops_starving_says_so_before_its_update(tmp_path):
    """While the env steps are there but no trajectory has finished, the learner tells the collector to step on
    regardless of its throttle; the moment one has, it takes that back, before the update it now makes (a
    process's first is slow): a stale flag let a collector take a whole epoch more with the untrained policy."""
    dataset = DiskTrajDataset(str(tmp_path), "run")
    learner = SimpleNamespace(dataset=dataset, run_dir=str(tmp_path / "run"), grad_updates=0, bad_updates=0,
                              total_frames=0, train_rollout=SimpleNamespace(explores=False), parallel_actors=8,
                              overlap_collectors=1, write_latest_policy=lambda: None,
                              _collector_processes=[SimpleNamespace(poll=lambda: None)])  # fmt: skip
    feed = OverlapFeed(learner, sequential_pace(), publish_every=5)
    write_json(feed.files.collector, {"frames": 240})
    assert not feed.wait(0.05)  # the env steps are there, no trajectory yet
    assert read_json(feed.files.learner)["starving"]
    save_trajectory(_trajectory(), dataset.fifo_dir, "env", "npz")
    assert feed.wait(5.0)
    assert read_json(feed.files.learner) == {"updates": 0, "policy": 0, "done": False, "starving": False}


def _trajectory(T: int = 10) -> Trajectory:
    return Trajectory(obs={"x": np.zeros((T + 1, 2), np.float32)}, rl2s=np.zeros((T + 1, 3), np.float32),
                      time_idxs=np.arange(T + 1)[:, None], actions=np.zeros((T, 2), np.float32),
                      rews=np.zeros((T, 1), np.float32), dones=np.zeros((T, 1), bool))  # fmt: skip


def test_several_collectors_have_their_own_files_seeds_and_share_of_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(INDEX_ENV, "2/3")
    assert run_files("collect", True) == ("metrics_collect_2.jsonl", os.path.join("overlap", "collector_2.gin"))
    assert run_files("collect", False) == ("metrics_collect.jsonl", "config.gin")
    assert run_files("learn", True) == ("metrics.jsonl", "config.gin")
    assert run_seed(5, "collect", True) != 5 and run_seed(5, "learn", True) == 5 and run_seed(5, "collect", False) == 5
    assert OverlapFiles(str(tmp_path), 2).log.endswith(os.path.join("overlap", "collector_2.log"))
    monkeypatch.setenv(INDEX_ENV, "0/3")
    assert run_files("collect", True) == ("metrics_collect.jsonl", os.path.join("overlap", "collector.gin"))
    assert run_seed(5, "collect", True) == 5
    args = dict(train_timesteps_per_epoch=30, parallel_actors=8, train_batches_per_epoch=10, epochs=4,
                overlap_updates_per_env_step=None, start_learning_at_epoch=0)  # fmt: skip
    pace = Pace.of(args, processes=3)  # an epoch: every collector's actors' steps
    assert pace.frames == 3 * 4 * 240 and pace.updates == 40 and pace.frames_needed(10) == 3 * 240
    # a resumed collector's own env steps: its share of the learner's total, in whole vector steps of 8 envs
    shares = []
    for i in range(3):
        collector = _resumed_collector(str(tmp_path), pace, i, 3, total_frames=8 * 100)
        shares.append(collector.exp.total_frames)
        # reported at once, so the learner and the other collectors count the steps its own throttle counts
        assert read_json(collector.files.collector) == {"frames": collector.exp.total_frames}
    assert shares == [8 * 34, 8 * 33, 8 * 33]


def _resumed_collector(run: str, pace: Pace, index: int, count: int, total_frames: int) -> PacedCollector:
    """Collector ``index`` of ``count`` (8 envs, not guarded: no process) resumed from a learner at
    ``total_frames``, settled."""
    exp = SimpleNamespace(run_dir=run, total_frames=total_frames, train_rollout=SimpleNamespace(num_envs=8),
                          callbacks=[])  # fmt: skip
    collector = PacedCollector(exp, pace, index, count)
    collector._own_frames_after_resume()
    return collector


def test_resumed_collectors_and_their_learner_never_wait_on_each_other(tmp_path):
    """The start-up order that once deadlocked a resumed run, played without processes or timing: collector 0 steps
    as far as its throttle lets it before collector 1 takes a step, and only then does the learner update. With
    each collector's share reported as it settles, the three always reach the run's end."""
    args = dict(train_timesteps_per_epoch=30, parallel_actors=8, train_batches_per_epoch=10, epochs=12,
                overlap_updates_per_env_step=None, start_learning_at_epoch=0)  # fmt: skip
    pace = Pace.of(args, processes=2)
    run, chunk = str(tmp_path), 3 * 8  # a tenth of an epoch's 30 vector steps of 8 envs
    updates = 20  # resumed after epoch 2: 960 env steps and 20 updates
    write_json(OverlapFiles(run).learner, {"updates": updates})
    collectors = [_resumed_collector(run, pace, i, 2, total_frames=960) for i in range(2)]
    everyone = [c.files.collector for c in collectors]
    while True:
        moved = False
        for c in collectors:  # each collector as far as it may go, collector 0 first
            while c.exp.total_frames < c.budget and c._may_step(c.exp.total_frames):
                c.exp.total_frames = min(c.budget, c.exp.total_frames + chunk)
                report_frames(c.files.collector, c.exp.total_frames)
                moved = True
        while updates < pace.updates and reported_frames(everyone) >= pace.frames_needed(updates + 1):
            updates, moved = updates + 1, True
        write_json(OverlapFiles(run).learner, {"updates": updates})
        if not moved:
            break
    assert [c.exp.total_frames for c in collectors] == [2880, 2880] and updates == pace.updates == 120


def _experiment(root, **overrides) -> Experiment:
    kwargs = dict(run_name="run", ckpt_base_dir=str(root), max_seq_len=7, dataset=DiskTrajDataset(str(root), "run"),
                  make_train_env=MetaBandit, make_val_env=MetaBandit, val_timesteps_per_epoch=6, parallel_actors=2,
                  env_mode="sync", verbose=False)  # fmt: skip
    kwargs.update(overrides)
    return Experiment(**kwargs)


@pytest.mark.parametrize("overrides, message", [
    (dict(overlap=True, role="collect"), "--overlap with --mode collect: an overlapped run is one learner"),
    (dict(overlap_collectors=2), "Experiment.overlap_collectors = 2 applies to overlapped runs only"),
    (dict(overlap=True, overlap_collectors=0), "Experiment.overlap_collectors must be an integer >= 1, got 0"),
    (dict(overlap=True, role="learn"), "--overlap with --mode learn"),
    (dict(overlap=True, start_collecting_at_epoch=2), "start_collecting_at_epoch > 0"),
    (dict(overlap=True, overlap_updates_per_env_step=0), "must be a number > 0"),
    (dict(overlap_publish_every=5), "applies to overlapped runs only: add --overlap"),
    (dict(overlap_updates_per_env_step=0.5), "applies to overlapped runs only"),
])  # fmt: skip
def test_settings_an_overlapped_run_cannot_honour_are_refused(tmp_path, monkeypatch, overrides, message):
    monkeypatch.delenv(PARENT_ENV, raising=False)
    with pytest.raises(ValueError, match=message):
        _experiment(tmp_path, **overrides)


def test_overlap_with_a_mode_fails_in_one_line_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv(PARENT_ENV, raising=False)
    cmd = [sys.executable, BANDIT, "--buffer_dir", str(tmp_path), "--overlap", "--mode", "collect"]
    done = subprocess.run(cmd, env={k: v for k, v in ENV.items() if k != PARENT_ENV}, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --overlap with --mode collect: an overlapped run is one learner that spawns its own collector; drop "
        "--mode for it, or drop --overlap to start --mode collect / learn processes yourself"
    ]
    assert not os.listdir(tmp_path)  # nothing built, nothing written


def test_the_cli_and_the_overlap_module_name_the_same_variable():
    from amago_like.cli import OVERLAP_PARENT_ENV

    assert OVERLAP_PARENT_ENV == PARENT_ENV


# ------------------------------------------------------------------ overlapped runs
def _collector_pids(stdout: str) -> list[int]:
    lines = [line for line in stdout.splitlines() if line.startswith("overlap: collector pid")]
    return [int(line.split()[3].rstrip(",")) for line in lines]


def _collector_pid(stdout: str) -> int:
    return _collector_pids(stdout)[0]


def test_an_overlapped_run_takes_the_sequential_runs_env_steps_and_updates(tmp_path):
    run = lambda name, *extra: subprocess.run(  # noqa: E731
        [sys.executable, BANDIT, "--buffer_dir", str(tmp_path), "--run_name", name, *SMALL, *extra],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    sequential = run("seq")
    assert sequential.returncode == 0, sequential.stderr[-2000:]
    overlapped = run("ovl", "--overlap")
    assert overlapped.returncode == 0, overlapped.stderr[-2000:]
    last = lambda name: [r for r in rows(tmp_path / name / "metrics.jsonl") if "epoch_seconds" in r][-1]  # noqa: E731
    seq, ovl = last("seq"), last("ovl")
    assert (ovl["total_frames"], ovl["grad_updates"], ovl["epoch"]) == (seq["total_frames"], seq["grad_updates"], 3)
    assert ovl["total_frames"] == 3 * 30 * 8 and "wall_seconds" in ovl
    # the collector wrote the buffer: every step of it, in whole 6-step meta-episodes
    fifo = tmp_path / "ovl" / "buffer" / "fifo"
    files = [f for f in os.listdir(fifo) if not f.startswith(".")]
    assert sum(count_transitions(str(fifo / f)) for f in files) == 3 * 30 * 8
    collected = rows(tmp_path / "ovl" / "metrics_collect.jsonl")
    assert collected[-1]["total_frames"] == 3 * 30 * 8 and "val/return" not in collected[-1]
    # it acted with weights published after the first: the update count behind its policy grew
    versions = [r["overlap/policy_updates"] for r in collected]
    assert versions == sorted(versions) and versions[-1] > versions[0] >= 0 and versions[-1] > 0
    assert sum(r["overlap/policy_loads"] for r in collected) >= 2
    assert (tmp_path / "ovl" / "ckpts" / "training_states" / "epoch_3" / "state.pt").exists()
    assert process_gone(_collector_pid(overlapped.stdout))
    assert "Experiment.role = 'collect'" in (tmp_path / "ovl" / "overlap" / "collector.gin").read_text()
    assert "Experiment.overlap = True" in (tmp_path / "ovl" / "config.gin").read_text()


def test_two_collectors_take_an_epoch_each_per_epoch_with_their_own_seeds(tmp_path):
    cmd = [sys.executable, BANDIT, "--buffer_dir", str(tmp_path), "--run_name", "two", *SMALL, "--overlap",
           "--collectors", "2"]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "two"
    last = [r for r in rows(run / "metrics.jsonl") if "epoch_seconds" in r][-1]
    assert (last["total_frames"], last["grad_updates"], last["epoch"]) == (2 * 3 * 30 * 8, 3 * 10, 3)
    fifo = run / "buffer" / "fifo"
    files = [f for f in os.listdir(fifo) if not f.startswith(".")]
    assert sum(count_transitions(str(fifo / f)) for f in files) == 2 * 3 * 30 * 8
    first, second = rows(run / "metrics_collect.jsonl"), rows(run / "metrics_collect_1.jsonl")
    assert first[-1]["total_frames"] == second[-1]["total_frames"] == 3 * 30 * 8  # each its own share
    assert [r.get("train/return") for r in first] != [r.get("train/return") for r in second]  # not the same episodes
    pids = _collector_pids(done.stdout)
    assert len(pids) == 2 and all(process_gone(p) for p in pids)
    assert "Experiment.seed = 7919" in (run / "overlap" / "collector_1.gin").read_text()


def test_episodes_longer_than_an_epoch_do_not_stall_an_overlapped_run(tmp_path):
    """Until the first meta-episode ends there is nothing to train on: the collector steps on past its throttle.
    (A sequential run skips such epochs' updates; an overlapped one makes them once data is there.)"""
    cmd = [sys.executable, BANDIT, "--buffer_dir", str(tmp_path), "--run_name", "long", *SMALL, "--overlap",
           "--gin", "Experiment.train_timesteps_per_epoch = 4", "--gin", "Experiment.val_interval = None"]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)  # 6-step meta-episodes
    assert done.returncode == 0, done.stderr[-2000:]
    last = [r for r in rows(tmp_path / "long" / "metrics.jsonl") if "epoch_seconds" in r][-1]
    assert (last["total_frames"], last["grad_updates"]) == (3 * 4 * 8, 3 * 10)


FAILING = """
from amago_like import overlap
if overlap.PARENT_ENV in __import__("os").environ:  # only the collector: it fails in its second chunk
    collect, calls = overlap.PacedCollector.collect, []
    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected collector failure")
        return collect(self, *args, **kwargs)
    overlap.PacedCollector.collect = failing
# (runpy would set sys.argv[0] to toy.py, and the collector would run without the failure)
exec(compile(open(TOY).read(), TOY, "exec"), {"__name__": "__main__", "__file__": TOY})
"""


def test_a_failing_collector_stops_the_learner_naming_its_log(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(f"TOY = {BANDIT!r}" + FAILING)  # the collector's command is this one, --mode collect added
    done = subprocess.run([sys.executable, str(script), "--buffer_dir", str(tmp_path), "--run_name", "f",
                           *SMALL, "--overlap"], env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    log = tmp_path / "f" / "overlap" / "collector.log"
    assert "CollectorFailed: the collector (pid" in last and "exited with status 1" in last, last
    assert "injected collector failure" in last and str(log) in last
    assert "injected collector failure" in log.read_text()
    assert process_gone(_collector_pid(done.stdout))


@pytest.mark.parametrize("collectors", [1, 2])
def test_a_killed_learners_collector_stops_and_the_run_resumes_overlapped(tmp_path, collectors):
    out = open(tmp_path / "learner.out", "w")
    # 12 epochs: collectors run at most an epoch ahead of the learner, so however late the kill lands after the
    # first checkpoint (a loaded machine can delay it by a few epochs of this tiny run), they still have steps to take
    cmd = [sys.executable, BANDIT, "--buffer_dir", str(tmp_path), "--run_name", "k", *SMALL, "--epochs", "12",
           "--overlap", "--collectors", str(collectors)]  # fmt: skip
    learner = subprocess.Popen(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    run = tmp_path / "k"
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "ckpts" / "training_states" / "epoch_1" / "state.pt").exists():
        time.sleep(0.05)
    learner.send_signal(signal.SIGKILL)  # the learner alone: its collector must notice by itself
    learner.wait()
    pids = _collector_pids((tmp_path / "learner.out").read_text())
    assert len(pids) == collectors
    deadline = time.time() + 30
    while time.time() < deadline and not all(process_gone(p) for p in pids):
        time.sleep(0.1)
    assert all(process_gone(p) for p in pids), "a collector outlived its learner"
    for i in range(collectors):
        log = run / "overlap" / ("collector.log" if i == 0 else f"collector_{i}.log")
        assert "is gone: the collector stops" in log.read_text()

    resumed = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from epoch" in resumed.stdout
    epochs = [r for r in rows(run / "metrics.jsonl") if "epoch_seconds" in r]
    assert [r["epoch"] for r in epochs][-1] == 12
    assert (epochs[-1]["total_frames"], epochs[-1]["grad_updates"]) == (collectors * 12 * 30 * 8, 12 * 10)
    frames = [r["total_frames"] for r in epochs]
    assert frames == sorted(frames)
