"""Every run is seeded: the same seed gives the same run, a run given none draws one, records it in config.gin and
prints it, and a resume keeps it. Every metrics row says what it is measured against; wandb charts against
environment steps and a resumed run continues the same wandb run."""

import json
import os

import pytest

from amago_like import DarkRoom, DiskTrajDataset, EpsilonGreedy, Experiment
from amago_like.cli import REPO_ROOT, apply_gin, run
from amago_like.config import read_arguments
from amago_like.evaluate import Evaluator

TIMING = (
    "epoch_seconds",
    "collect_seconds",
    "learn_seconds",
    "wall_seconds",
)  # how long things took: the only figures a seed cannot fix


def dark_room(root, run_name="run", **overrides) -> Experiment:
    apply_gin([os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")], [])
    kwargs = dict(
        run_name=run_name, ckpt_base_dir=str(root), max_seq_len=37, dataset=DiskTrajDataset(str(root), run_name),
        make_train_env=DarkRoom, make_val_env=DarkRoom, val_timesteps_per_epoch=36, parallel_actors=2,
        env_mode="sync", epochs=1, train_timesteps_per_epoch=36, train_batches_per_epoch=3, batch_size=4,
        val_interval=1, ckpt_interval=1, log_interval=1, verbose=False, exploration_wrapper_type=EpsilonGreedy,
    )  # fmt: skip
    kwargs.update(overrides)
    return Experiment(**kwargs)


def first_epoch(path) -> dict:
    rows = [json.loads(line) for line in open(path)]
    row = next(r for r in rows if "epoch_seconds" in r)
    return {k: v for k, v in row.items() if k not in TIMING}


def train(root, **overrides) -> Experiment:
    exp = dark_room(root, **overrides)
    exp.learn()
    exp.close()
    return exp


def test_two_runs_with_the_same_seed_have_the_same_first_epoch(tmp_path):
    # env resets (goals), exploration (EpsilonGreedy), the batches sampled and torch's initialisation all follow it
    a = first_epoch(train(tmp_path / "a", seed=5).run_folder.metrics)
    b = first_epoch(train(tmp_path / "b", seed=5).run_folder.metrics)
    assert "learn/critic_loss" in a and "val/return" in a and "train/return" in a
    assert a == b
    other = first_epoch(train(tmp_path / "c", seed=6).run_folder.metrics)
    assert other["learn/critic_loss"] != a["learn/critic_loss"]


class FakeWandbRun:
    def __init__(self, **kwargs):
        self.kwargs, self.defined, self.logged = kwargs, [], []

    def define_metric(self, name, **kwargs):
        self.defined.append((name, kwargs))

    def log(self, row, **kwargs):
        self.logged.append((row, kwargs))

    def finish(self):
        pass


def test_a_run_given_no_seed_draws_one_and_a_resume_keeps_it_its_clock_and_its_wandb_run(tmp_path, capsys, monkeypatch):
    wandb = pytest.importorskip("wandb")
    wandb_runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: wandb_runs.append(FakeWandbRun(**kw)) or wandb_runs[-1])
    exp = dark_room(tmp_path, verbose=True, log_to_wandb=True)
    run(exp)
    config = (tmp_path / "run" / "config.gin").read_text()
    assert isinstance(exp.seed, int) and read_arguments(config)["seed"] == str(exp.seed)
    assert f"seed {exp.seed} (drawn; --seed {exp.seed} repeats it)" in capsys.readouterr().out
    assert Evaluator(str(tmp_path / "run")).settings["seed"] == exp.seed  # evaluations reset envs from it too
    rows = [json.loads(line) for line in open(exp.run_folder.metrics)]
    assert rows and all({"total_frames", "grad_updates", "wall_seconds", "epoch"} <= set(r) for r in rows)
    checkpointed = next(r for r in rows if "epoch_seconds" in r)["wall_seconds"]

    again = dark_room(tmp_path, epochs=2, verbose=True, log_to_wandb=True)
    run(again, resume=True)
    assert again.seed == exp.seed
    assert f"seed {exp.seed} (the run's own, from its config.gin" in capsys.readouterr().out
    assert (tmp_path / "run" / "config.gin").read_text() == config  # nothing changed: no config set aside
    assert not list((tmp_path / "run").glob("config.until_epoch_*.gin"))
    later = [json.loads(line) for line in open(exp.run_folder.metrics)][len(rows) :]
    assert later and all(r["wall_seconds"] > checkpointed for r in later)  # the clock goes on from the checkpoint

    first, resumed = wandb_runs
    stored = (tmp_path / "run" / "wandb_id").read_text()
    assert first.kwargs["id"] == resumed.kwargs["id"] == stored and resumed.kwargs["resume"] == "allow"
    assert ("*", {"step_metric": "total_frames"}) in first.defined
    assert first.logged and all("total_frames" in row and "step" not in kw for row, kw in first.logged)
