"""Files written before the architecture redesign (tests/fixtures/old_run, see make_old_run.py) still load:
its config.gin parses, its training state resumes with its counters, its policy weights load."""

import functools
import os
import shutil

import pytest
import torch

from amago_like import DiskTrajDataset, EpsilonGreedy, Experiment, MetaBandit
from amago_like.cli import apply_gin

OLD_RUN = os.path.join(os.path.dirname(__file__), "fixtures", "old_run")


@pytest.fixture
def old_run(tmp_path):
    """A copy of the fixture run folder (tests must not write into the committed one)."""
    run = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, run)
    return run


def _experiment(root, **overrides) -> Experiment:
    apply_gin([os.path.join(root, "old_run", "config.gin")], [])
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
