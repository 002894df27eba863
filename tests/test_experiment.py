"""Experiment end to end on the meta-bandit: epochs, run folder, checkpoints, evaluate_test, errors."""

import copy
import functools
import json
import os

import gin
import gymnasium as gym
import numpy as np
import pytest
import torch

from amago_like import CheckpointError, DiskTrajDataset, Experiment, MetaBandit, RunExistsError
from amago_like.cli import GinBindingError, apply_gin

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(ROOT, "configs", "models", "tiny.gin")


def make_experiment(root, run_name="run", **overrides) -> Experiment:
    kwargs = dict(
        run_name=run_name,
        ckpt_base_dir=str(root),
        max_seq_len=7,
        dataset=DiskTrajDataset(str(root), run_name),
        make_train_env=MetaBandit,
        make_val_env=MetaBandit,
        val_timesteps_per_epoch=12,
        parallel_actors=2,
        env_mode="sync",
        epochs=2,
        train_timesteps_per_epoch=12,
        train_batches_per_epoch=3,
        batch_size=4,
        val_interval=1,
        ckpt_interval=1,
        verbose=False,
        seed=0,
    )
    kwargs.update(overrides)
    return Experiment(**kwargs)


@pytest.fixture
def tiny_model():
    apply_gin([TINY], [])


@pytest.fixture
def trained(tmp_path, tiny_model):
    exp = make_experiment(tmp_path)
    exp.start()
    metrics = exp.learn()
    yield exp, metrics
    exp.close()


def test_learn_writes_run_folder_buffer_and_metrics(trained, tmp_path):
    exp, metrics = trained
    run = tmp_path / "run"
    assert (run / "config.gin").read_text().count("TformerTrajEncoder.d_model = 64") == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 2]  # two epochs, then the final policy's evaluation
    assert "val/return" in rows[-1] and "learn/critic_loss" not in rows[-1]
    assert rows[-1]["grad_updates"] == 6 and rows[-1]["total_frames"] == 2 * 12 * 2
    assert "val/return" in rows[0] and "learn/critic_loss" in rows[1]
    assert "val/Episode 1 Return" in metrics and "val/bandit-3arms/return" in metrics
    assert sorted(os.listdir(run / "ckpts" / "training_states")) == ["epoch_1", "epoch_2"]
    assert (run / "ckpts" / "policy_weights" / "policy_epoch_2.pt").exists()
    assert (run / "ckpts" / "latest" / "policy.pt").exists()
    assert list((run / "plots").glob("*.png"))
    # 2 actors x 24 steps of 6-step meta-episodes = 8 finished episodes on disk
    assert len(os.listdir(run / "buffer" / "fifo")) == 8


def _greedy_actions(exp: Experiment) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    N, L = 3, 5
    policy = exp.policy.eval()
    hidden = policy.init_hidden_state(N, exp.DEVICE)
    out = []
    obs = torch.zeros(N, L, 1)
    rl2s = torch.rand(N, L, 4, generator=g)
    for t in range(L):
        a, hidden = policy.get_actions(
            {"observation": obs[:, t : t + 1]}, rl2s[:, t : t + 1], torch.full((N, 1, 1), t), hidden, sample=False
        )
        out.append(a)
    return torch.stack(out, 1)


def test_checkpoint_round_trip_restores_actions_and_counters(trained, tmp_path):
    exp, _ = trained
    expected_actions = _greedy_actions(exp)
    expected_state = {k: v.clone() for k, v in exp.policy.state_dict().items()}

    fresh = make_experiment(tmp_path, seed=1)
    fresh.start()
    assert fresh.epoch == 0
    fresh.load_checkpoint(2)
    assert (fresh.epoch, fresh.grad_updates, fresh.total_frames) == (2, 6, 48)
    for k, v in fresh.policy.state_dict().items():
        torch.testing.assert_close(v, expected_state[k], rtol=0, atol=0)
    assert torch.equal(_greedy_actions(fresh), expected_actions)
    fresh.close()


def test_a_fresh_experiment_does_not_train_over_an_existing_run(trained, tmp_path):
    exp, _ = trained
    ckpts = tmp_path / "run" / "ckpts" / "training_states"
    saved = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = make_experiment(tmp_path, epochs=3)
    again.start()
    with pytest.raises(
        RunExistsError, match=r"already holds a run \(checkpoints of epochs \[1, 2\]\).*load_latest_checkpoint"
    ):
        again.learn()
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == saved
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    again.load_latest_checkpoint()  # continuing it is fine
    again.learn()
    assert again.epoch == 3 and "epoch_3" in os.listdir(ckpts)
    again.close()


def test_resume_takes_the_configured_learning_rate_and_weight_decay(tmp_path, tiny_model):
    first = make_experiment(tmp_path, learning_rate=1e-3, l2_coeff=0.0, lr_warmup_steps=1)
    first.start()
    first.learn()
    first.close()
    again = make_experiment(tmp_path, learning_rate=2e-4, l2_coeff=0.01, lr_warmup_steps=1, epochs=3)
    again.start()
    again.load_latest_checkpoint()
    group = again.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(2e-4) and group["weight_decay"] == 0.01
    metrics = again.learn()
    assert metrics["learn/lr"] == pytest.approx(2e-4)
    again.close()


def test_load_checkpoint_errors_name_the_problem(trained, tmp_path):
    exp, _ = trained
    with pytest.raises(CheckpointError, match=r"no checkpoint for epoch 7 .*available epochs: \[1, 2\]"):
        exp.load_checkpoint(7)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        exp.load_checkpoint_from_path(str(tmp_path / "nowhere.pt"))
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        exp.load_checkpoint_from_path(str(bad))

    with open(bad, "wb") as f:
        torch.save([1, 2], f)
    with pytest.raises(CheckpointError, match="holds a list, not a model's weights"):
        exp.load_checkpoint_from_path(str(bad))

    saved = str(tmp_path / "run" / "ckpts" / "training_states" / "epoch_2")
    gin.bind_parameter("Agent.target_entropy", -1.0)  # adds a learned entropy coefficient
    gin.bind_parameter("Agent.entropy_coeff", 0.01)
    other = make_experiment(tmp_path, run_name="other")
    other.start()
    with pytest.raises(CheckpointError, match=r"not in the checkpoint: log_entropy_coeff; .*Agent.target_entropy"):
        other.load_checkpoint_from_path(saved)
    other.close()
    gin.bind_parameter("Agent.target_entropy", None)
    gin.bind_parameter("Agent.actor_lr_scale", 0.5)  # the same weights, one optimizer group more
    other = make_experiment(tmp_path, run_name="other_rates")
    other.start()
    with pytest.raises(CheckpointError, match=r"optimizer has 1 parameter groups and this agent's has 2.*actor_lr"):
        other.load_checkpoint_from_path(saved)
    other.close()
    gin.bind_parameter("Agent.actor_lr_scale", 1.0)
    gin.bind_parameter("TformerTrajEncoder.d_model", 32)  # a different model shape
    other = make_experiment(tmp_path, run_name="other2")
    other.start()
    with pytest.raises(CheckpointError, match=r"different model shape \(other shapes: .*\(64,\) saved, \(32,\) here"):
        other.load_checkpoint_from_path(saved)
    other.close()


def test_load_average_weights_takes_the_mean_of_the_checkpoints(trained, tmp_path):
    exp, _ = trained
    weights = tmp_path / "run" / "ckpts" / "policy_weights"
    one, two = (torch.load(weights / f"policy_epoch_{e}.pt") for e in (1, 2))
    exp.load_average_weights(
        [str(weights / "policy_epoch_1.pt"), str(tmp_path / "run" / "ckpts" / "training_states" / "epoch_2")]
    )
    mean = exp.policy.state_dict()
    moved = [k for k, v in one.items() if v.is_floating_point() and not torch.equal(v, two[k])]
    assert moved  # two epochs of updates changed the weights, so the mean is neither checkpoint
    for k in moved:
        torch.testing.assert_close(mean[k], (one[k] + two[k]) / 2)
    counters = [k for k, v in two.items() if not v.is_floating_point()]
    assert counters and all(torch.equal(mean[k], two[k]) for k in counters)  # counters from the newest

    with pytest.raises(CheckpointError, match="at least one checkpoint"):
        exp.load_average_weights([])
    gin.bind_parameter("TformerTrajEncoder.d_model", 32)
    other = make_experiment(tmp_path, run_name="other", epochs=1)
    other.start()
    other.learn()
    with pytest.raises(CheckpointError, match=r"policy_epoch_1.pt and .*hold different models .*one run only"):
        exp.load_average_weights(
            [
                str(tmp_path / "other" / "ckpts" / "policy_weights" / "policy_epoch_1.pt"),
                str(weights / "policy_epoch_2.pt"),
            ]
        )
    other.close()


def test_evaluate_test_saves_a_dataset_that_reads_back(trained, tmp_path):
    exp, _ = trained
    demos = DiskTrajDataset(str(tmp_path), "demos")
    metrics = exp.evaluate_test(
        functools.partial(MetaBandit, split="test"), timesteps=18, save_trajs_to=demos.protected_dir
    )
    assert metrics["test/episodes"] == 6 and 0 <= metrics["test/return"] <= 6
    demos.refresh_files()
    assert len(demos) == 6
    traj = demos.sample_random_trajectory(np.random.default_rng(0))
    assert len(traj) == 7 and traj.actions.shape == (6, 3) and traj.dones[-1, 0]
    np.testing.assert_array_equal(traj.actions.sum(-1), np.ones(6))  # one-hot actions


@pytest.mark.parametrize("env_mode, traj_save_len", [("sync", None), ("async", 4)])
def test_evaluate_test_writes_exactly_the_episodes_it_counts(trained, tmp_path, env_mode, traj_save_len):
    """2 actors stepped in chunks of 100 finish 32 meta-episodes; 3 are counted, and only those are written
    (all their segments when they are cut in pieces; none of the unfinished ones)."""
    from amago_like.data.trajectory import load_trajectory

    exp, _ = trained
    exp.env_mode, exp.traj_save_len = env_mode, traj_save_len
    out = tmp_path / "test_trajs"
    metrics = exp.evaluate_test(MetaBandit, timesteps=600, save_trajs_to=str(out), episodes=3)
    assert metrics["test/episodes"] == 3
    names = os.listdir(out)  # no staging folder left behind either
    assert len(names) == 3 if traj_save_len is None else len(names) >= 6
    trajs = [load_trajectory(str(out / n)) for n in names]
    assert sum(len(t.actions) for t in trajs) == 3 * 6  # three whole 6-pull meta-episodes
    assert sum(t.dones.sum() for t in trajs) <= 3
    assert np.isclose(sum(t.rews.sum() for t in trajs), 3 * metrics["test/return"], atol=1e-4)


def test_evaluate_test_stops_after_requested_episodes(trained):
    exp, _ = trained
    metrics = exp.evaluate_test(MetaBandit, timesteps=600, episodes=3)
    assert metrics["test/episodes"] == 3


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(env_mode="threads"), "unknown env_mode 'threads'"),
        (dict(save_trajs_as="csv"), "unknown save_trajs_as 'csv'"),
        (dict(padded_sampling="middle"), "unknown padded_sampling"),
        (dict(mixed_precision="fp8"), "unknown mixed_precision"),
        (dict(max_seq_len=1), "max_seq_len must be >= 2"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(exploration_wrapper_type="epsilon"), "exploration_wrapper_type must be 'auto', None or"),
        (dict(async_envs_per_worker=0), "Experiment.async_envs_per_worker must be 'auto' or an integer >= 1"),
        (dict(env_mode="sync", async_envs_per_worker=4), "Experiment.async_envs_per_worker = 4 .* only env_mode"),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        make_experiment(tmp_path, **override)


@pytest.mark.parametrize(
    "binding, message",
    [
        ('Experiment.epochs = "ten"', "Experiment.epochs must be an integer, got 'ten'"),
        ("Experiment.batch_size = 2.5", "Experiment.batch_size must be an integer, got 2.5"),
        ('Experiment.learning_rate = "fast"', "Experiment.learning_rate must be a number"),
    ],
)
def test_wrong_type_gin_binding_fails_naming_the_parameter(tmp_path, binding, message):
    gin.parse_config(binding)  # not apply_gin, which refuses it before Experiment's own check
    with pytest.raises(TypeError, match=message):
        Experiment(
            run_name="t", ckpt_base_dir=str(tmp_path), max_seq_len=7, dataset=DiskTrajDataset(str(tmp_path), "t"),
            make_train_env=MetaBandit, make_val_env=MetaBandit, val_timesteps_per_epoch=6,
        )  # fmt: skip
    assert not (tmp_path / "t" / "ckpts").exists()  # nothing written before the check


def test_unknown_gin_binding_names_the_offender():
    with pytest.raises(GinBindingError, match="Experiment.epochz"):
        apply_gin([], ["Experiment.epochz = 3"])
    with pytest.raises(GinBindingError, match="NoSuchThing"):
        apply_gin([], ["NoSuchThing.x = 1"])


def test_exploration_wraps_training_actors_only(tmp_path, tiny_model):
    from amago_like import EpsilonGreedy

    gin.bind_parameter("EpsilonGreedy.eps_start", 0.5)
    gin.bind_parameter("EpsilonGreedy.eps_end", 0.5)
    exp = make_experiment(tmp_path, exploration_wrapper_type=EpsilonGreedy, epochs=1)
    exp.start()
    metrics = exp.learn()
    assert 0.0 <= metrics["train/epsilon"] <= 0.5  # per-actor randomised epsilon reaches the logs
    assert "val/epsilon" not in metrics
    exp.close()


@pytest.mark.parametrize("eval_sample, expected", [(None, True), (False, False)])
def test_eval_sample_actions_chooses_how_evaluations_act(tmp_path, tiny_model, eval_sample, expected):
    exp = make_experiment(tmp_path, eval_sample_actions=eval_sample, epochs=1)
    exp.start()
    calls = []
    get_actions = exp.policy.get_actions

    def spy(*args, sample, averaged):
        calls.append((sample, averaged))
        return get_actions(*args, sample=sample, averaged=averaged)

    exp.policy.get_actions = spy
    exp.collect_new_training_data()
    train_calls, calls[:] = list(calls), []
    exp.evaluate_val()
    exp.evaluate_test(MetaBandit, timesteps=12)
    exp.close()
    # training rollouts always follow sample_actions and act with the live weights (the data to learn from);
    # evaluations ask for the averaged weights, which act where Agent.averaged_policy_rate keeps them
    assert set(train_calls) == {(True, False)}
    assert calls and set(calls) == {(expected, True)}


def test_auto_exploration_perturbs_continuous_actions_only(tmp_path, tiny_model):
    from amago_like import EpsilonGreedy, PointGoal

    bandit = make_experiment(tmp_path, run_name="bandit")  # the default: "auto"; discrete pulls
    bandit.start()
    assert not bandit.train_rollout.explores and not any(isinstance(e, EpsilonGreedy) for e in bandit.train_envs.envs)
    bandit.close()
    point = make_experiment(tmp_path, run_name="point", make_train_env=PointGoal, make_val_env=PointGoal)
    point.start()
    assert point.train_rollout.explores and all(isinstance(e, EpsilonGreedy) for e in point.train_envs.envs)
    assert point.train_envs.get_attr("run_steps") == (24, 24)  # 2 epochs x 12 steps per actor, annealed over half
    assert not any(isinstance(e, EpsilonGreedy) for e in point.val_envs.envs)
    point.close()
    with pytest.raises(ValueError, match="EpsilonGreedy goes around single envs, not an already vectorized one"):
        make_experiment(tmp_path, env_mode="already_vectorized", exploration_wrapper_type=EpsilonGreedy)
    # a wrapper passed from Python may have no __name__ (a partial): the same one-line error, not an AttributeError
    with pytest.raises(ValueError, match="goes around single envs, not an already vectorized one"):
        make_experiment(
            tmp_path, env_mode="already_vectorized", exploration_wrapper_type=functools.partial(EpsilonGreedy)
        )


def test_exploration_by_default_anneals_over_the_first_half_of_the_run(tmp_path, tiny_model):
    from amago_like import EpsilonGreedy

    gin.bind_parameter("EpsilonGreedy.randomize_eps", False)
    gin.bind_parameter("EpsilonGreedy.eps_end", 0.0)
    exp = make_experiment(tmp_path, exploration_wrapper_type=EpsilonGreedy, epochs=4)
    exp.start()
    assert exp.train_envs.get_attr("run_steps") == (48, 48)  # 4 epochs x 12 steps per actor
    assert exp.train_envs.get_attr("current_epsilon") == (1.0, 1.0)
    exp.learn()
    assert exp.train_envs.get_attr("current_epsilon") == (0.0, 0.0)  # annealed by step 24 of 48, then held
    exp.close()


def test_resume_continues_the_exploration_schedule(tmp_path, tiny_model):
    from amago_like import EpsilonGreedy

    gin.bind_parameter("EpsilonGreedy.steps_anneal", 1000)
    exp = make_experiment(tmp_path, exploration_wrapper_type=EpsilonGreedy, epochs=2)
    exp.start()
    exp.learn()
    before = exp.train_envs.get_attr("total_steps")
    exp.close()
    assert before == (24, 24)  # 2 epochs x 12 steps per actor

    resumed = make_experiment(tmp_path, exploration_wrapper_type=EpsilonGreedy, epochs=3)
    resumed.start()
    assert resumed.train_envs.get_attr("total_steps") == (0, 0)
    resumed.load_latest_checkpoint()
    assert resumed.train_envs.get_attr("total_steps") == before  # epsilon does not restart at eps_start
    resumed.close()


def test_traj_save_len_splits_episodes_into_segments(tmp_path, tiny_model):
    exp = make_experiment(tmp_path, traj_save_len=2, stagger_traj_file_lengths=False, epochs=1)
    exp.start()
    exp.collect_new_training_data()
    exp.dataset.refresh_files()
    # 2 actors x 12 steps: four 6-step episodes, each saved as three 2-transition files
    assert len(exp.dataset) == 12
    lengths = {len(exp.dataset.sample_random_trajectory(np.random.default_rng(i))) for i in range(20)}
    assert lengths == {3}
    with pytest.raises(ValueError, match="traj_save_len"):
        make_experiment(tmp_path, traj_save_len=0)
    exp.close()


def test_force_reset_restarts_training_episodes(tmp_path, tiny_model):
    # 4-step collections never finish a 6-step episode unless the envs keep their state across epochs
    exp = make_experiment(tmp_path, train_timesteps_per_epoch=4, force_reset_train_envs_every=4, epochs=1)
    exp.start()
    for _ in range(3):
        assert exp.collect_new_training_data()["train/episodes"] == 0
    exp.close()
    exp = make_experiment(tmp_path, run_name="keep", train_timesteps_per_epoch=4, epochs=1)
    exp.start()
    finished = sum(exp.collect_new_training_data()["train/episodes"] for _ in range(3))
    assert finished == 2 * 2  # 12 steps per actor: two 6-step episodes each
    exp.close()


def test_mask_hooks_choose_the_transitions_each_loss_sees(trained):
    exp, _ = trained
    batch = next(iter(_loader(exp))).to(exp.DEVICE)
    exp.policy.eval()  # frozen normalisation statistics, so only the masks differ between calls

    torch.manual_seed(0)
    base, _ = exp.compute_loss(batch)
    exp.edit_actor_mask = lambda b, m: torch.zeros_like(m)  # the actor learns from nothing
    exp.edit_critic_mask = lambda b, m: torch.zeros_like(m)
    torch.manual_seed(0)
    none, metrics = exp.compute_loss(batch)
    assert none.item() == 0.0 and metrics["critic_loss"].item() == 0.0 and metrics["actor_loss"].item() == 0.0
    exp.edit_critic_mask = lambda b, m: m  # the critic back on every real transition
    torch.manual_seed(0)
    critic_only, metrics = exp.compute_loss(batch)
    assert metrics["actor_loss"].item() == 0.0 and critic_only.item() == pytest.approx(
        exp.critic_loss_weight * metrics["critic_loss"].item()
    )
    assert base.item() != critic_only.item()


def _loader(exp):
    from amago_like.data import make_dataloader

    exp.dataset.refresh_files()
    return make_dataloader(exp.dataset, exp.max_seq_len, 4, 1)


def test_wandb_offline_needs_no_key(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    exp = make_experiment(tmp_path, log_to_wandb=True, epochs=1, val_interval=None)
    exp.start()
    exp.learn()
    exp.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_torch_compile_traces_the_whole_loss_and_matches_eager(tmp_path, tiny_model, monkeypatch):
    # aot_eager traces forward and backward as inductor does, without generating code (seconds, not minutes);
    # fullgraph: a graph break (a host sync, a requires_grad toggle) fails here instead of slowing a GPU run
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager", fullgraph=True))
    exp = make_experiment(tmp_path, epochs=1, torch_compile=True)
    exp.start()
    exp.collect_new_training_data()
    batch = next(iter(_loader(exp))).to(exp.DEVICE)
    start = copy.deepcopy(exp.agent.state_dict())
    results = []
    for forward in (exp.agent, exp._train_forward):  # eager, then compiled, from the same weights and statistics
        exp.agent.load_state_dict(start)
        torch.manual_seed(0)
        critic_loss, actor_loss, _ = forward(batch)
        (critic_loss + actor_loss).backward()
        grads = [p.grad.clone() for p in exp.agent.parameters() if p.grad is not None]
        exp.agent.zero_grad(set_to_none=True)
        results.append((critic_loss.detach(), actor_loss.detach(), grads, copy.deepcopy(exp.agent.state_dict())))
    (c_eager, a_eager, g_eager, s_eager), (c_comp, a_comp, g_comp, s_comp) = results
    torch.testing.assert_close(c_comp, c_eager)
    torch.testing.assert_close(a_comp, a_eager)
    assert len(g_comp) == len(g_eager) > 0
    for g_c, g_e in zip(g_comp, g_eager):
        torch.testing.assert_close(g_c, g_e)
    for key in s_eager:  # PopArt and input-normalisation statistics updated in place, as in eager mode
        torch.testing.assert_close(s_comp[key], s_eager[key], msg=key)
    assert any(not torch.equal(start[k], s_eager[k]) for k in start)  # the statistics did move
    metrics = exp.learn()
    assert np.isfinite(metrics["learn/critic_loss"])
    exp.close()


def test_torch_compile_takes_a_mode_and_names_the_choices_for_any_other_value(tmp_path, monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    exp = make_experiment(tmp_path, epochs=1, torch_compile="reduce-overhead")
    exp.start()
    assert modes == ["reduce-overhead"]
    with pytest.raises(ValueError, match=r"Experiment.torch_compile must be .*'reduce-overhead'.*got 'fast'"):
        make_experiment(tmp_path, run_name="bad", torch_compile="fast")


def test_validation_envs_are_built_on_first_evaluation_only(tmp_path, tiny_model):
    exp = make_experiment(tmp_path, epochs=1, val_interval=None)
    exp.learn()  # a run that never validates starts no validation envs
    assert exp._val_rollout is None
    metrics = exp.evaluate_val()
    assert exp.val_envs.num_envs == 2 and metrics["val/episodes"] > 0
    exp.close()


def test_lr_decay_to_ends_the_run_at_that_fraction_of_the_learning_rate(tmp_path, tiny_model):
    # 3 epochs x 3 batches = 9 planned updates, warm-up 1: a cosine from 1e-3 down to 1e-4 at update 9
    exp = make_experiment(tmp_path, epochs=3, learning_rate=1e-3, lr_warmup_steps=1, lr_decay_to=0.1, log_interval=1)
    exp.start()
    exp.learn()
    exp.close()
    assert exp.grad_updates == 9 and exp.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    lrs = [r["learn/lr"] for r in rows if "learn/lr" in r]  # per batch and per epoch (their mean)
    assert lrs[0] > 9e-4 and min(lrs) < 2e-4


def test_lr_decay_to_out_of_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"Experiment.lr_decay_to must be None \(no decay\) or a fraction .*got 1.5"):
        make_experiment(tmp_path, lr_decay_to=1.5)


def test_the_dataset_relabels_with_the_hindsight_every_training_env_offers_alike(tmp_path, tiny_model):
    from amago_like import PointGoal
    from amago_like.envs.builtin.point_goal import PointGoalHindsight

    def relabeling(name, **overrides):
        exp = make_experiment(tmp_path, run_name=name, **{"make_val_env": PointGoal, **overrides})
        exp.start()
        exp.close()
        relabeler = exp.dataset.env_relabeler
        assert ("0.65 of it relabeled by" in exp.dataset.get_description()) == (relabeler is not None)
        return relabeler

    sparse = functools.partial(PointGoal, "sparse")
    assert relabeling("sparse", make_train_env=sparse, env_mode="async") == PointGoalHindsight("sparse", "train", 0.2)
    assert relabeling("bandit", make_val_env=MetaBandit) is None  # an env that offers none
    # a wrapper that may change the rewards, or actors that play different envs: none
    scaled = lambda: gym.wrappers.TransformReward(PointGoal("sparse"), lambda r: 2 * r)  # noqa: E731
    assert relabeling("scaled", make_train_env=scaled) is None
    assert relabeling("mixed", make_train_env=[sparse, functools.partial(PointGoal, "dense")]) is None
    # gymnasium.make's own wrappers keep the rewards
    timed = lambda: gym.wrappers.TimeLimit(gym.wrappers.OrderEnforcing(PointGoal("dense")), 75)  # noqa: E731
    assert relabeling("timed", make_train_env=timed) == PointGoalHindsight("dense", "train", 0.2)
    # a vector env of one's own: its wrappers are not known, so it is not asked
    own = lambda: gym.vector.SyncVectorEnv([sparse, sparse], autoreset_mode="SameStep")  # noqa: E731
    assert relabeling("own", make_train_env=own, make_val_env=own, env_mode="already_vectorized") is None
