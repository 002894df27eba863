"""The architecture of issue 20: one resume path with one timeline of metrics, a final checkpoint, the reference
override points, env factories per actor, gin bindings that take effect or are refused, module boundaries."""

import ast
import functools
import json
import os

import gin
import pytest
import torch

from amago_like import DiskTrajDataset, Experiment, KEpisodeMetaworld, MetaBandit
from amago_like.cli import REPO_ROOT, GinBindingError, apply_gin

TINY = os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")
PACKAGE = os.path.join(REPO_ROOT, "amago_like")


def small(root, bindings=(), **overrides) -> Experiment:
    apply_gin([TINY], list(bindings))
    kwargs = dict(
        run_name="run", ckpt_base_dir=str(root), max_seq_len=7, dataset=DiskTrajDataset(str(root), "run"),
        make_train_env=MetaBandit, make_val_env=MetaBandit, val_timesteps_per_epoch=6, parallel_actors=2,
        env_mode="sync", epochs=3, train_timesteps_per_epoch=12, train_batches_per_epoch=4, batch_size=4,
        val_interval=1, ckpt_interval=1, log_interval=1, verbose=False, seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    if kwargs["dataset"] is None:  # built after the bindings, so that they reach it
        kwargs["dataset"] = DiskTrajDataset(str(root), "run")
    return Experiment(**kwargs)


def rows(path):
    return [json.loads(line) for line in open(path)]


def assert_one_timeline(path):
    """Steps never go back, and every row but the final evaluation's (which repeats the last epoch's step)
    has a step of its own: no series holds two points at one step."""
    steps = [r["step"] for r in rows(path)]
    assert steps == sorted(steps), steps
    assert len(set(steps[:-1])) == len(steps) - 1, steps


class Killed(Exception):
    pass


def test_python_resume_after_a_mid_epoch_kill_keeps_one_timeline(tmp_path):
    exp = small(tmp_path)
    exp.start()
    train_step = exp.train_step
    calls = []

    def dies_in_epoch_3(batch):  # the process dies halfway through epoch 3, after logging rows of it
        calls.append(1)
        if len(calls) == 10:
            raise Killed
        return train_step(batch)

    exp.train_step = dies_in_epoch_3
    with pytest.raises(Killed):
        exp.learn()
    exp.close()
    assert exp.checkpoint_epochs() == [1, 2]
    assert any(r["epoch"] == 3 for r in rows(tmp_path / "run" / "metrics.jsonl"))  # rows of the lost epoch

    again = small(tmp_path)
    again.start()
    assert again.load_latest_checkpoint() == 2
    again.learn()
    again.close()
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert_one_timeline(metrics)
    assert [r["epoch"] for r in rows(metrics) if "epoch_seconds" in r] == [1, 2, 3]
    assert all(r["epoch"] == 3 for r in rows(tmp_path / "run" / "metrics.after_epoch_2.jsonl"))


def test_mid_epoch_rows_carry_the_epoch_they_belong_to(tmp_path):
    exp = small(tmp_path, epochs=2)
    exp.learn()
    exp.close()
    logged = rows(tmp_path / "run" / "metrics.jsonl")
    mid = [r for r in logged if "learn/critic_loss" in r and "epoch_seconds" not in r]
    assert [r["epoch"] for r in mid] == [1, 1, 1, 2, 2, 2]  # log_interval 1 of 4 batches: the 4th is the epoch row
    assert_one_timeline(tmp_path / "run" / "metrics.jsonl")
    for epoch_row in (r for r in logged if "epoch_seconds" in r):  # the two phases of the epoch, each timed
        collect, learn = epoch_row["collect_seconds"], epoch_row["learn_seconds"]
        assert 0 < collect and 0 < learn and collect + learn <= epoch_row["epoch_seconds"]


def test_learn_always_ends_with_a_training_state_checkpoint(tmp_path):
    exp = small(tmp_path, epochs=3, ckpt_interval=2)
    exp.learn()
    exp.close()
    assert exp.checkpoint_epochs() == [2, 3]
    exp = small(tmp_path / "b", epochs=1, ckpt_interval=None)
    exp.learn()
    exp.close()
    assert exp.checkpoint_epochs() == [1]


def test_reference_override_points_are_called(tmp_path):
    class SGDExperiment(Experiment):
        seen = []

        def init_optimizer(self, policy):
            self.seen.append("optimizer")
            return torch.optim.SGD(policy.param_groups(self.learning_rate), lr=self.learning_rate)

        def init_dsets(self):
            self.seen.append("dsets")
            super().init_dsets()

        def init_checkpoints(self):
            self.seen.append("checkpoints")
            super().init_checkpoints()

        def init_dloaders(self):
            self.seen.append("dloaders")
            return super().init_dloaders()

    exp = small(tmp_path, epochs=1)
    exp.__class__ = SGDExperiment
    exp.learn()
    assert isinstance(exp.optimizer.optimizer, torch.optim.SGD)  # (accelerate wraps it)
    assert SGDExperiment.seen == ["checkpoints", "dsets", "optimizer", "dloaders"]
    assert exp.checkpoint_epochs() == [1]
    exp.close()


def test_evaluate_test_takes_the_reference_signature(tmp_path):
    exp = small(tmp_path, epochs=1)
    exp.start()
    saved = tmp_path / "demos"
    metrics = exp.evaluate_test(MetaBandit, 12, False, str(saved), 2)  # (make_test_env, timesteps, render, ...)
    assert metrics["test/episodes"] == 2 and list(saved.rglob("*.npz"))
    exp.close()


def test_a_list_of_env_factories_assigns_one_to_each_actor(tmp_path):
    two = functools.partial(MetaBandit, k_episodes=2)
    four = functools.partial(MetaBandit, k_episodes=4)
    exp = small(tmp_path, make_train_env=[two, four], make_val_env=[four, two], epochs=1)
    exp.start()
    assert [e.unwrapped.k for e in exp.train_envs.envs] == [2, 4]
    assert [e.unwrapped.k for e in exp.val_envs.envs] == [4, 2]
    metrics = exp.collect_new_training_data()  # 12 steps: 6 episodes of 2 pulls and 3 of 4
    assert metrics["train/episodes"] == 9 and metrics["train/episode_length"] == pytest.approx((6 * 2 + 3 * 4) / 9)
    exp.close()
    with pytest.raises(ValueError, match="one to each actor: it needs parallel_actors = 2 callables, got 3"):
        small(tmp_path / "b", make_train_env=[two, two, two]).start()


def test_kepisode_metaworld_takes_a_benchmark_object_or_a_name():
    pytest.importorskip("metaworld")
    import metaworld

    bench = metaworld.ML1("reach-v3", seed=0)
    env = KEpisodeMetaworld(bench, "test", 2, max_episode_length=10)
    assert env.benchmark_name == "reach-v3"
    obs, _ = env.reset(seed=0)
    assert obs.shape == (40,)
    by_name = KEpisodeMetaworld("reach-v3", "test", 2, max_episode_length=10)
    assert by_name.benchmark_name == "reach-v3"


@pytest.mark.parametrize(
    "binding, message",
    [
        ("TransformerBlock.dropout = 0.5", "`TransformerBlock.dropout` is set by `TformerTrajEncoder.dropout`; bind that"),
        ("SelfAttention.window = 4", "`SelfAttention.window` is set by `TformerTrajEncoder.attention_window`"),
        ("LearnedPosEmb.max_time_idx = 10", "`LearnedPosEmb.max_time_idx` is set by `TformerTrajEncoder.max_time_idx`"),
        ("FixedPosEmb.max_time_idx = 10", "`FixedPosEmb.max_time_idx` is set by `TformerTrajEncoder.max_time_idx`"),
        ("ValueBins.limit = 5.0", "`ValueBins.limit` is set by `MultiTaskAgent.bin_limit`"),
        ("CriticEnsemble.num_critics = 4", "`CriticEnsemble.num_critics` is set by `Agent.num_critics`; bind that"),
        ("Actor.num_gammas = 3", "`Actor.num_gammas` is set by `Agent.multigamma_actor`; bind that"),
        ("Agent.tstep_encoder_type = @CNNTstepEncoder", "`Agent.tstep_encoder_type` is set by `Experiment.tstep_encoder_type`"),
        ("ExplorationWrapper.randomize_eps = False", "is set by `EpsilonGreedy.randomize_eps`"),
        ("ExplorationWrapper.noise_correlation = 0.5", "is set by `EpsilonGreedy.noise_correlation`"),
        ("Actor.state_dim = 3", "`Actor.state_dim` is passed by the part that builds Actor"),
    ],
)  # fmt: skip
def test_bindings_that_would_do_nothing_are_refused_when_parsed(binding, message):
    with pytest.raises(GinBindingError, match="(?s)" + message.replace("(", r"\(").replace("[", r"\[")):
        apply_gin([], [binding])


def test_refused_bindings_also_fail_when_gin_is_parsed_directly(tmp_path):
    gin.parse_config("CriticEnsemble.num_critics = 4")
    with pytest.raises(GinBindingError, match="`CriticEnsemble.num_critics` is set by `Agent.num_critics`"):
        small(tmp_path)
    gin.clear_config()
    gin.parse_config("KEpisodeMetaworld.k_episodes = 4")
    from amago_like import Metaworld

    with pytest.raises(GinBindingError, match="`KEpisodeMetaworld.k_episodes` is set by `Metaworld.k_episodes`"):
        Metaworld("reach-v3")


def test_agent_popart_binding_is_refused_under_multitask_agent(tmp_path):
    from amago_like import MultiTaskAgent

    exp = small(tmp_path, ["Agent.popart = True"], agent_type=MultiTaskAgent, epochs=1)
    with pytest.raises(GinBindingError, match="`Agent.popart` is fixed by the part that builds Agent here"):
        exp.start()
    exp.close()


def test_nested_bindings_that_are_allowed_change_the_built_module(tmp_path):
    bindings = ["TformerTrajEncoder.dropout = 0.25", "CriticEnsemble.hidden = (8,)", "Agent.num_critics = 3",
                "DiskTrajDataset.has_edit_rights = False"]  # fmt: skip
    exp = small(tmp_path, bindings, epochs=1, dataset=None)
    exp.start()
    policy = exp.policy
    assert {b.drop.p for b in policy.traj_encoder.blocks} == {0.25}
    assert policy.critics.num_critics == 3 and policy.critics.out.weight.shape[1] == 8
    assert exp.dataset.has_edit_rights is False  # the experiment narrows the binding, never widens it
    exp.close()


def test_modules_stay_small_and_imports_point_one_way():
    sizes = {}
    imports: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                text = open(path).read()
                name = os.path.relpath(path, PACKAGE)
                sizes[name] = text.count("\n")
                tree = ast.parse(text)
                modules[name] = {
                    n.module
                    for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("amago_like.")
                }
                imports[name] = {m.split(".")[1] for m in modules[name]}
    too_big = {name: n for name, n in sizes.items() if n > 500}
    assert not too_big, too_big  # every module, experiment.py included (its ~60 arguments are one per line)
    lower = {"data", "envs", "nets", "io", "config", "checks", "threads"}
    for name, deps in imports.items():
        if name.startswith(("data/", "envs/", "nets/")) or name in ("io.py", "config.py", "checks.py", "threads.py"):
            assert deps <= lower | {"callbacks"}, (name, deps)  # the layers below never import the ones above
        if name.startswith(("data/", "envs/")):
            assert "nets" not in deps and "agents" not in deps, (name, deps)
    importers = {name for name, deps in imports.items() if "experiment" in deps}
    assert importers <= {"__init__.py", "cli.py"}, importers
    agents = [name for name in imports if name.startswith("agents/")]
    for part in ("rollout.py", "learner.py", "run_dir.py", "evaluate.py", "checkpoints.py", *agents):
        assert "experiment" not in imports[part]
    assert "cli" not in imports["evaluate.py"]  # gin parsing is config.py's
    for part in ("run_dir.py", "logging.py"):  # files only: no parts, no networks
        assert imports[part] <= {"io"}, (part, imports[part])
    assert imports["plots.py"] <= {"io", "logging"}, imports["plots.py"]  # drawn from the files logging writes
    # inside data/: trajectory <- dataset (the interface) <- buffer, batches; dataset.py names them only lazily
    assert not modules["data/dataset.py"] & {"amago_like.data.buffer", "amago_like.data.batches"}
    assert "amago_like.data.buffer" not in modules["data/batches.py"]


def test_moved_names_still_import_from_their_old_modules():
    from amago_like import config, data
    from amago_like.cli import REPO_ROOT, GinTypeError, apply_gin, is_bound  # noqa: F401  (now config.py's)
    from amago_like.data.dataset import (  # noqa: F401  (now data/buffer.py's and data/batches.py's)
        TRAJ_SUFFIXES,
        Batch,
        DiskTrajDataset,
        SequenceSampler,
        TrajectoryCache,
        TrajFolderDataset,
        collate,
        collate_windows,
        make_dataloader,
        window_of,
    )
    from amago_like.envs.builtin.metaworld import ML_BENCHMARKS, get_benchmark, normalize_benchmark_name  # noqa: F401

    assert apply_gin is config.apply_gin and Batch is data.batches.Batch and DiskTrajDataset is data.DiskTrajDataset
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        data.dataset.Nothing  # noqa: B018


def test_a_run_records_its_python_arguments_and_evaluate_uses_them(tmp_path, capsys):
    from amago_like import evaluate

    four_arms = functools.partial(MetaBandit, n_arms=4, split="train")  # given in Python: gin never sees it
    exp = small(tmp_path, make_train_env=four_arms, make_val_env=four_arms, epochs=1, val_interval=None)
    exp.learn()
    exp.close()
    config = (tmp_path / "run" / "config.gin").read_text()
    assert "# Experiment.max_seq_len = 7" in config
    assert "# Experiment.make_val_env = @MetaBandit(n_arms=4, split='train')" in config
    gin.clear_config()
    metrics = evaluate.main([str(tmp_path / "run"), "--split", "test", "--episodes", "2"])  # no --env, --max_seq_len
    assert "test/bandit-4arms/return" in metrics and metrics["test/episodes"] == 2
    assert "on the test split, 2 meta-episodes" in capsys.readouterr().out


def test_evaluate_acts_with_the_averaged_weights_unless_told_live(tmp_path, capsys):
    """As the run's own evaluations, `evaluate` acts with the averaged weights the agent keeps (its diagnostics
    watch that actor); --live_weights acts with the trained ones, and says when a run keeps no average."""
    from amago_like import PointGoal, evaluate

    point = functools.partial(PointGoal, episode_length=3, k_episodes=2)
    exp = small(tmp_path, make_train_env=point, make_val_env=point, epochs=1, val_interval=None)
    exp.learn()
    exp.close()
    run = str(tmp_path / "run")
    weights = {}
    for flags in ([], ["--live_weights"]):
        gin.clear_config()
        evaluate.main([run, "--split", "test", "--episodes", "2", "--actions", "mode", *flags])
        out = capsys.readouterr().out
        assert "policy pre-tanh |mean| per action dim" in out  # the actor that acted was watched
        weights[bool(flags)] = out
    assert "(live weights)" in weights[True] and "(live weights)" not in weights[False]
    gin.clear_config()
    live = evaluate.Evaluator(run, live_weights=True)  # the same switch from Python
    live.evaluate("test", 2, sample=False)
    assert live.policy.averaged_policy is None and live.weights_tag == "_live"
    gin.clear_config()
    none = small(tmp_path / "none", ["Agent.averaged_policy_rate = None"], make_train_env=point, make_val_env=point,
                 epochs=1, val_interval=None)  # fmt: skip
    none.learn()
    none.close()
    gin.clear_config()
    with pytest.raises(SystemExit, match="keeps no averaged weights"):
        evaluate.main([str(tmp_path / "none" / "run"), "--split", "test", "--episodes", "2", "--live_weights"])
    gin.clear_config()
    with pytest.raises(evaluate.NoAveragedWeights, match="drop live_weights"):
        evaluate.Evaluator(str(tmp_path / "none" / "run"), live_weights=True).evaluate("test", 2)


def test_evaluate_uses_what_the_run_used_unless_told_otherwise(tmp_path):
    from amago_like import evaluate

    exp = small(tmp_path, ["Experiment.parallel_actors = 5"], parallel_actors=2, epochs=1, val_interval=None)
    exp.learn()  # Python's parallel_actors=2 won over the binding in this run
    exp.close()
    gin.clear_config()
    assert evaluate.Evaluator(str(tmp_path / "run")).settings["parallel_actors"] == 2
    gin.clear_config()
    told = evaluate.Evaluator(str(tmp_path / "run"), ["Experiment.parallel_actors = 3"])
    assert told.settings["parallel_actors"] == 3
