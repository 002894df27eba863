"""Files written before the architecture redesign (tests/fixtures/old_run, see make_old_run.py) still load:
its config.gin parses, its training state resumes with its counters, its policy weights load."""

import functools
import os
import shutil

import pytest
import torch
from helpers import load_example

from amago_like import DiskTrajDataset, EpsilonGreedy, Experiment, MetaBandit
from amago_like.config import apply_run_config, values_as_built

OLD_RUN = os.path.join(os.path.dirname(__file__), "fixtures", "old_run")


@pytest.fixture
def old_run(tmp_path):
    """A copy of the fixture run folder (tests must not write into the committed one)."""
    run = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, run)
    return run


def _experiment(root, **overrides) -> Experiment:
    apply_run_config(os.path.join(root, "old_run", "config.gin"))
    kwargs = dict(
        run_name="old_run",
        ckpt_base_dir=str(root),
        max_seq_len=7,
        dataset=DiskTrajDataset(str(root), "old_run"),
        make_train_env=functools.partial(MetaBandit, split="train"),
        make_val_env=functools.partial(MetaBandit, split="test"),
        exploration_wrapper_type=EpsilonGreedy,
        val_timesteps_per_epoch=8,
        parallel_actors=2,
        env_mode="sync",
        epochs=3,
        train_timesteps_per_epoch=8,
        train_batches_per_epoch=2,
        batch_size=4,
        val_interval=1,
        ckpt_interval=2,
        verbose=False,
        seed=0,
    )
    kwargs.update(overrides)
    return Experiment(**kwargs)


def test_old_training_state_resumes_with_its_counters(old_run):
    exp = _experiment(old_run.parent)
    exp.start()
    assert exp.load_latest_checkpoint() == 2
    assert (exp.epoch, exp.total_frames, exp.grad_updates) == (2, 32, 4)
    saved = torch.load(old_run / "ckpts" / "training_states" / "epoch_2" / "state.pt", weights_only=False)
    for k, v in exp.policy.state_dict().items():
        torch.testing.assert_close(v, saved["agent"][k], rtol=0, atol=0)
    exp.learn()  # one more epoch on top of the old state
    assert exp.epoch == 3 and exp.grad_updates == 6
    exp.close()


@pytest.mark.parametrize("weights", ["policy_weights/policy_epoch_2.pt", "latest/policy.pt"])
def test_old_policy_weights_load(old_run, weights):
    exp = _experiment(old_run.parent)
    exp.start()
    exp.load_checkpoint_from_path(str(old_run / "ckpts" / weights), resume_training_state=False)
    saved = torch.load(old_run / "ckpts" / weights, weights_only=False)
    for k, v in exp.policy.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert exp.epoch == 0
    exp.close()


def test_evaluate_reads_the_old_runs_env_and_builds_no_optimizer(old_run, monkeypatch, capsys):
    from amago_like import evaluate
    from amago_like.envs import vector

    def no_optimizer(*args, **kwargs):
        raise AssertionError("evaluate built an optimizer")

    monkeypatch.setattr(torch.optim, "AdamW", no_optimizer)
    built = []
    make = vector.make_vector_env
    monkeypatch.setattr(evaluate, "make_vector_env", lambda *a, **k: built.append(a[1]) or make(*a, **k))
    with pytest.raises(SystemExit, match="does not record Experiment.max_seq_len.*--max_seq_len"):
        evaluate.main([str(old_run), "--split", "test", "--episodes", "2"])
    metrics = evaluate.main([str(old_run), "--split", "test", "--episodes", "4", "--max_seq_len", "7", "--epoch", "2"])
    assert built == [12]  # one vector env: the test envs (Experiment.parallel_actors' default), no training envs
    assert metrics["test/episodes"] == 4 and "test/bandit-4arms/return" in metrics  # MetaBandit.n_arms from config.gin
    assert "(random 1.50, best 4.50)" in capsys.readouterr().out


def test_the_command_line_resumes_an_old_run_as_it_was_built(old_run, capsys):
    """--resume binds the values the old run's config.gin does not record (its critics took the action once),
    so the command that made it continues it; today's defaults would not fit its checkpoint."""
    toy = load_example("toy")
    shapes = ["max_seq_len = 7", "val_timesteps_per_epoch = 8", "parallel_actors = 2", "train_timesteps_per_epoch = 8",
              "train_batches_per_epoch = 2", "batch_size = 4", "env_mode = 'sync'", "val_interval = 1"]  # fmt: skip
    argv = ["--env", "bandit", "--resume", "--buffer_dir", str(old_run.parent), "--run_name", "old_run", "--epochs",
            "3", "--configs", str(old_run / "config.gin"), *[a for s in shapes for a in ("--gin", f"Experiment.{s}")]]  # fmt: skip
    toy.main(argv)
    assert "resuming from epoch 2" in capsys.readouterr().out
    assert (old_run / "ckpts" / "training_states" / "epoch_3").is_dir()
    assert "CriticEnsemble.action_repeat = 1" in (old_run / "config.gin").read_text()
    assert "CriticEnsemble.discrete_head = False" in (old_run / "config.gin").read_text()


def test_a_run_is_rebuilt_with_the_values_of_changed_defaults_it_recorded_or_predates(tmp_path):
    old = values_as_built(os.path.join(OLD_RUN, "config.gin"))  # written before action_repeat existed
    # its exploration wrapper was given in Python (not recorded as a binding), its schedule's length through gin
    assert old == ["CriticEnsemble.action_repeat = 1", "TformerTrajEncoder.pos_emb = 'learned'",
                   "EpsilonGreedy.steps_anneal = 1000", "Agent.num_actions_for_value = 4",
                   "CriticEnsemble.discrete_head = False", "TformerTrajEncoder.dropout = 0.0",
                   "TformerTrajEncoder.n_layers = 1", "Agent.averaged_policy_rate = None",
                   "Agent.novelty_bonus = 0.0", "CriticEnsemble.hidden = (16,)",
                   "TformerTrajEncoder.token_shift = False", "DiskTrajDataset.recency = 0.0",
                   "DiskTrajDataset.hindsight = 0.0", "TrajFolderDataset.hindsight = 0.0"]  # fmt: skip
    gru_run = tmp_path / "config.gin"  # a GRU run records no transformer parameter: only the values from
    # before a parameter existed are bound (an unused binding of the transformer's costs nothing)
    gru_run.write_text("GRUTrajEncoder.d_hidden = 64\nCriticEnsemble.action_repeat = 16\n"
                       "Experiment.exploration_wrapper_type = None\n")  # fmt: skip
    assert values_as_built(str(gru_run)) == [
        "CriticEnsemble.action_repeat = 16",
        "Experiment.exploration_wrapper_type = None",
        "CriticEnsemble.discrete_head = False",
        "Agent.averaged_policy_rate = None",  # written before evaluations acted with averaged weights
        "Agent.novelty_bonus = 0.0",  # and before TD targets had an exploration bonus
        "TformerTrajEncoder.token_shift = False",  # and before tokens carried their predecessor's input
        "DiskTrajDataset.recency = 0.0",  # and before newer buffer files were replayed more often
        "DiskTrajDataset.hindsight = 0.0",  # and before an env's hindsight relabeling was used
        "TrajFolderDataset.hindsight = 0.0",
    ]


def test_evaluate_says_when_it_rebuilds_an_env_the_run_did_not_record(capsys):
    """A run given its env factory in Python with arguments (a bound method, a lambda) has no recorded factory, and
    the env rebuilt from its configurable has only gin's arguments: evaluate says so instead of guessing silently.
    A recorded partial gives back its arguments, with no note."""
    from amago_like import PointGoal, evaluate

    unrecorded = "PointGoal.goal_radius = 0.2\n"
    assert evaluate._env_from_config(unrecorded) == (PointGoal, {})
    assert "config.gin records no env factory; evaluating PointGoal" in capsys.readouterr().err
    recorded = unrecorded + "# Experiment.make_val_env = @PointGoal('sparse', 25, 3, split='test')\n"
    fn, kwargs = evaluate._env_from_config(recorded)
    assert fn is PointGoal and kwargs == {"reward": "sparse", "episode_length": 25, "k_episodes": 3, "split": "test"}
    assert capsys.readouterr().err == ""
