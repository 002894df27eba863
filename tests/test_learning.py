"""Learning is shown by learning: the transformer agent must adapt in context on the meta-bandit."""

import ast
import inspect
import json
import os

import numpy as np
import pytest
from helpers import ROOT, load_example

import amago_like
from amago_like import MetaBandit, evaluate


def test_bandit_agent_learns_to_explore_then_exploit(tmp_path, two_threads):
    """configs/bandit.gin (about 30-60 s on 2 cores): random play earns 2.0 of a best 5.0."""
    bandit = load_example("toy")
    final = bandit.main(["--buffer_dir", str(tmp_path), "--run_name", "learn"])
    env = MetaBandit()
    rows = [json.loads(line) for line in open(tmp_path / "learn" / "metrics.jsonl")]
    first = rows[0]  # evaluated before any update: the untrained policy
    assert abs(first["val/return"] - env.random_return()) < 1.0

    # the return rises well above random, close to the best achievable ...
    assert final["val/return"] >= 4.3, final["val/return"]
    assert final["val/return"] > first["val/return"] + 1.5
    # ... because later pulls exploit what earlier pulls found
    assert final["val/Episode 6 Return"] >= 0.9
    assert final["val/Episode 6 Return"] > final["val/Episode 1 Return"] + 0.4


def test_learning_suite_quick_run_learns_the_bandit_with_defaults(tmp_path, suite):
    """benchmarks/learning/suite.py --quick (about 2 min): the default agent, with nothing bound but
    the env and its budget, learns the 3-arm bandit; the other tasks run end to end and score."""
    results = suite.main(["--quick", "--out", str(tmp_path)])
    scores = {r.task: r.score for r in results}
    assert set(scores) == set(suite.TOY_TASKS)
    assert all(np.isfinite(s) for s in scores.values()), scores
    assert scores["bandit"] >= 0.6, scores  # random play scores 0, the best explore-then-exploit 1
    # the same policy evaluated again acting with its mode: a second score of the same scale, in the row and table
    mode = {r.task: r.score_mode for r in results}
    assert all(np.isfinite(s) for s in mode.values()), mode
    assert mode["bandit"] >= 0.6, mode
    assert all(len(r.per_episode_mode) == len(r.per_episode) for r in results)
    table_md = (tmp_path / "table.md").read_text()
    assert table_md.count("IQM of normalized scores:") == 1
    assert table_md.count("IQM of normalized scores acting with the policy's mode:") == 1
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(suite.TOY_TASKS)


def test_suite_updates_x_multiplies_updates_at_the_same_env_steps_and_names_itself(tmp_path, suite):
    """--updates_x N (a diagnostic off the suite's budget): N times the updates, the same env steps, and a row
    that says so among its bindings, so it is never read as a suite result."""
    once, twice = (
        suite.main(["--quick", "--tasks", "bandit_noisy", "--out", str(tmp_path / f"x{n}"), "--updates_x", str(n)])[0]
        for n in (1, 2)
    )
    assert twice.updates == 2 * once.updates > 0
    assert twice.env_steps == once.env_steps
    assert once.bindings == [] and twice.bindings == ["--updates_x 2"]
    with pytest.raises(SystemExit):
        suite.main(["--quick", "--out", str(tmp_path / "x0"), "--updates_x", "0"])


def test_suite_epochs_x_multiplies_env_steps_and_updates_and_names_itself(tmp_path, suite):
    """--epochs_x N: N times the epochs, so N times the env steps and the updates at the same replay ratio."""
    once, twice = (
        suite.main(["--quick", "--tasks", "tmaze", "--out", str(tmp_path / f"e{n}"), "--epochs_x", str(n)])[0]
        for n in (1, 2)
    )
    assert (twice.env_steps, twice.updates) == (2 * once.env_steps, 2 * once.updates)
    assert once.env_steps > 0 and once.updates > 0
    assert twice.bindings == ["--epochs_x 2"]
    with pytest.raises(SystemExit):
        suite.main(["--quick", "--out", str(tmp_path / "e0"), "--epochs_x", "0"])


def test_suite_refuses_a_binding_it_would_override_and_obeys_one_it_does_not_set(tmp_path, suite, capsys):
    """A --gin binding of a parameter the suite sets per run (the budget, the seed) would be silently overridden, so
    it is refused with one line naming the flag to use; the suite's own default of checkpoints (none before the
    last epoch) is a binding like any other, so Experiment.ckpt_interval = 1 keeps every epoch's weights."""
    with pytest.raises(SystemExit):
        suite.main(["--quick", "--out", str(tmp_path / "no"), "--gin", "Experiment.epochs = 3"])
    assert "the suite sets Experiment.epochs for every run itself; use --epochs_x" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    for name, extra in (("last", []), ("every", ["--gin", "Experiment.ckpt_interval = 1"])):
        out = tmp_path / name
        suite.main(["--quick", "--tasks", "bandit", "--out", str(out), *extra])
        kept = {p.name for p in (out / "bandit_s0" / "ckpts" / "policy_weights").iterdir()}
        epochs = suite.TASKS["bandit"].quick.epochs
        assert epochs > 1
        assert kept == {f"policy_epoch_{e}.pt" for e in (range(1, epochs + 1) if name == "every" else [epochs])}
    # the run records its env factory with the task's arguments, so amago_like.evaluate rebuilds the same env
    config = (tmp_path / "last" / "bandit_s0" / "config.gin").read_text()
    fn, kwargs = evaluate._env_from_config(config)
    task_env = suite.TASKS["bandit"].make_env
    assert fn is task_env.func and kwargs["split"] == "test"
    assert [kwargs[k] for k in list(kwargs)[: len(task_env.args)]] == list(task_env.args)


def test_suite_overlap_collects_in_a_second_process_at_the_same_budget_and_names_itself(tmp_path, suite):
    """--overlap: each run is a learner and the collector it spawns (this script with --mode collect), which
    rebuilds the same run (bindings and budget multipliers included) and acts with the learner's policies; the
    row has the sequential run's env steps and updates and says it was overlapped."""
    argv = ["--quick", "--tasks", "bandit_noisy", "--epochs_x", "2", "--gin", "Agent.tau = 0.01"]
    sequential = suite.main([*argv, "--out", str(tmp_path / "seq")])[0]
    overlapped = suite.main([*argv, "--out", str(tmp_path / "ovl"), "--overlap"])[0]
    assert (overlapped.env_steps, overlapped.updates) == (sequential.env_steps, sequential.updates)
    assert overlapped.bindings == ["Agent.tau = 0.01", "--epochs_x 2", "--overlap"]
    run = tmp_path / "ovl" / "bandit_noisy_s0"
    assert "Agent.tau = 0.01" in (run / "overlap" / "collector.gin").read_text()
    rows = [json.loads(line) for line in (run / "metrics_collect.jsonl").read_text().splitlines()]
    assert sum(r["overlap/policy_loads"] for r in rows) >= 1
    with pytest.raises(SystemExit):  # the collector's flag alone: it needs its learner's one task and seed
        suite.main(["--quick", "--out", str(tmp_path / "c"), "--mode", "collect"])


def test_the_defaults_rows_are_todays_defaults_at_each_tasks_budget(suite):
    """docs/results/suite/defaults.jsonl is the baseline a candidate default is compared with: every toy task on 3+
    seeds, each (task, seed) once, at the task's budget, and every binding a row names equal to today's default. A
    row made off the budget or with a candidate's value fails here, and so does one whose binding was later changed
    as a default; a default changed elsewhere is not seen, so the change that makes it remakes the file."""
    rows = suite.load_results(os.path.join(ROOT, "docs", "results", "suite", "defaults.jsonl"))
    seeds = {}
    for r in rows:
        assert r.seed not in seeds.setdefault(r.task, set()), (r.task, r.seed)
        seeds[r.task].add(r.seed)
        task = suite.TASKS[r.task]
        b = task.budget
        assert (r.env_steps, r.updates) == (
            b.epochs * b.steps_per_epoch * task.parallel_actors,
            b.epochs * b.updates_per_epoch,
        )
        for binding in r.bindings:
            name, value = binding.split("=", 1)
            cls, param = name.split(".")
            default = inspect.signature(getattr(amago_like, cls).__init__).parameters[param].default
            assert default == ast.literal_eval(value), (binding, default)  # a number, a bool, a string, a tuple
    assert set(seeds) == set(suite.TOY_TASKS)
    assert all(len(s) >= 3 for s in seeds.values()), seeds
