"""Evaluate a trained run's policy on a chosen task split, without exploration noise.

The run's own evaluations use the held-out split; this one also shows how the policy does on fresh
meta-episodes drawn like its training ones (``--split train``), which separates "has not learned the
search" from "does not carry it over to goal cells it never saw rewarded".

    python benchmarks/learning/eval_split.py runs/learning/dark_room --split train --episodes 64
    python benchmarks/learning/eval_split.py runs/learning/ml1_reach --env metaworld --split train
    python benchmarks/learning/eval_split.py runs/learning/ml1_reach --env metaworld --split test --actions mode
    python benchmarks/learning/eval_split.py runs/learning/ml1_reach_sampled --env metaworld --split train \
        --gin 'KEpisodeMetaworld.train_goals = "benchmark"'
    python benchmarks/learning/eval_split.py runs/learning/dark_room --split test --episodes 8 --render_to videos
    python benchmarks/learning/eval_split.py runs/learning/ml1_reach_sampled --env metaworld --split test \
        --actions mode --average 300:350 --each_goal

``--average FIRST:LAST`` evaluates the mean of the weights saved at those epochs, which evens out the
swings between single checkpoints.

``--each_goal`` (Meta-World) plays every task of the split once, one actor each: an exact figure
over the benchmark's 50 goals per class. ``--episodes N`` draws tasks at random instead, with
repeats (128 draws from reach-v3's 50 held-out goals covered 45 of them), and a policy acting with
its mode repeats the same meta-episode on a repeated goal.

``--save_trajs_to DIR`` keeps every evaluated meta-episode there as a trajectory dataset.

``--render_to DIR`` writes the first actor's meta-episodes there as GIFs (``MUJOCO_GL=egl`` for Meta-World).

Meta-World runs record their benchmark in config.gin (``Metaworld.benchmark_name``); ``--benchmark`` is
needed only for runs made before that.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import gin
import torch

from amago_like import DarkRoom, DiskTrajDataset, Experiment, MetaBandit, Metaworld
from amago_like.cli import GinBindingError, apply_gin, is_bound
from amago_like.nets.distributions import TanhGaussian

ENVS = {"dark_room": DarkRoom, "bandit": MetaBandit, "metaworld": Metaworld}  # toy names as examples/toy.py


def epoch_range(text: str) -> tuple[int, int]:
    """``"300:350"`` -> (300, 350)."""
    try:
        first, last = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST:LAST, e.g. 300:350") from None
    if first > last:
        raise argparse.ArgumentTypeError(f"{text!r}: FIRST is after LAST")
    return first, last


def saved_weights(ckpts: str, first: int, last: int) -> list[str]:
    """The run's policy-weights files for epochs first..last, oldest first."""
    folder = os.path.join(ckpts, "policy_weights")
    saved = sorted(
        int(m.group(1))
        for n in (os.listdir(folder) if os.path.isdir(folder) else [])
        if (m := re.fullmatch(r"policy_epoch_(\d+)\.pt", n))
    )
    chosen = [e for e in saved if first <= e <= last]
    if not chosen:
        sys.exit(f"error: no weights saved for epochs {first}-{last} in {folder}; saved epochs: {saved}")
    return [os.path.join(folder, f"policy_epoch_{e}.pt") for e in chosen]


def _next_task(make_env: Callable[..., Any], counter: Iterator[int], **kwargs: Any) -> Any:
    """The env for the next task index: each call of a sync vector env's factory gets its own task."""
    return make_env(task_index=next(counter), **kwargs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Evaluate, print the summary, and return the evaluation's metrics (``test/...``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--env", choices=sorted(ENVS), default="dark_room")
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--benchmark", default=None, help="Meta-World benchmark (default: the one in the run's config.gin)"
    )
    parser.add_argument("--episodes", type=int, default=64, help="meta-episodes to average over")
    parser.add_argument(
        "--each_goal",
        action="store_true",
        help="Meta-World: one meta-episode on every task of the split, one actor each (replaces --episodes)",
    )
    parser.add_argument(
        "--actions", choices=("sample", "mode"), default="sample", help="sample the policy, or act with its mode"
    )
    parser.add_argument(
        "--gin", action="append", default=[], help="binding applied over the run's config.gin (repeatable)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--epoch", type=int, default=None, help="evaluate this epoch's saved weights (default: latest)")
    which.add_argument(
        "--average",
        metavar="FIRST:LAST",
        type=epoch_range,
        default=None,
        help="evaluate the mean of the weights saved at epochs FIRST to LAST",
    )
    parser.add_argument("--render_to", default=None, help="write the first actor's meta-episodes here as GIFs")
    parser.add_argument(
        "--save_trajs_to", default=None, help="write every evaluated meta-episode here as a trajectory dataset"
    )
    args = parser.parse_args(argv)
    config = os.path.join(args.run_dir, "config.gin")
    if not os.path.isfile(config):
        sys.exit(f"error: {config} not found; run_dir must be a run folder (runs/learning/NAME)")
    try:
        apply_gin([config], args.gin)
    except GinBindingError as e:
        sys.exit(f"error: {e}")
    if args.env == "metaworld":
        if args.benchmark is not None:
            gin.bind_parameter("Metaworld.benchmark_name", args.benchmark)
        elif not is_bound("Metaworld.benchmark_name"):
            parser.error(f"{args.run_dir}/config.gin does not name its Meta-World benchmark: pass --benchmark")
        make_env = functools.partial(Metaworld, split=args.split)
    elif args.each_goal:
        parser.error("--each_goal is for Meta-World runs (--env metaworld)")
    else:
        make_env = functools.partial(ENVS[args.env], split=args.split)
    actors = {}
    if args.each_goal:  # one sync actor per task: a factory shared by subprocesses could not count them
        with contextlib.closing(make_env()) as env:
            args.episodes = env.unwrapped.num_tasks
        actors = dict(parallel_actors=args.episodes, env_mode="sync")
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(
            run_name="eval",
            ckpt_base_dir=tmp,
            dataset=DiskTrajDataset(tmp, "eval"),
            make_train_env=make_env,
            make_val_env=make_env,
            **actors,
            exploration_wrapper_type=None,
            eval_sample_actions=args.actions == "sample",
            verbose=False,
        )
        exp.start()
        gaussians: list[TanhGaussian] = []  # the policy's distribution at every rollout step
        exp.policy.actor.register_forward_hook(
            lambda _m, _i, dist: gaussians.append(dist) if isinstance(dist, TanhGaussian) else None
        )
        try:
            ckpts = os.path.join(args.run_dir, "ckpts")
            if args.average is not None:
                exp.load_average_weights(saved_weights(ckpts, *args.average))
            elif args.epoch is not None:
                exp.load_checkpoint_from_path(
                    os.path.join(ckpts, "policy_weights", f"policy_epoch_{args.epoch}.pt"), False
                )
            else:
                exp.load_checkpoint_from_path(os.path.join(ckpts, "latest", "policy.pt"), False)
            make_test_env = functools.partial(make_env, render_mode="rgb_array") if args.render_to else make_env
            if args.each_goal:
                make_test_env = functools.partial(_next_task, make_test_env, itertools.count())
            metrics = exp.evaluate_test(
                make_test_env,
                10**6,
                save_trajs_to=args.save_trajs_to,
                episodes=args.episodes,
                render_to=args.render_to,
            )
        finally:
            exp.close()
    weights = ""
    if args.epoch is not None:
        weights = f" (epoch {args.epoch})"
    elif args.average is not None:
        weights = f" (weights of epochs {args.average[0]}-{args.average[1]} averaged)"
    print(
        f"{args.run_dir}{weights} on the {args.split} split, {args.episodes} meta-episodes"
        f"{' (each task once)' if args.each_goal else ''}, {args.actions} actions: return {metrics['test/return']:.2f}"
    )
    if gaussians:  # a wide pre-tanh std makes sampled actions mostly +-1 noise
        mean = torch.cat([d.mean.reshape(-1, d.mean.shape[-1]) for d in gaussians]).abs().mean(0)
        std = torch.cat([d.std.reshape(-1, d.std.shape[-1]) for d in gaussians]).mean(0)
        print(f"  policy pre-tanh |mean| per action dim {mean.numpy().round(2)}, std {std.numpy().round(2)}")
    if args.env == "metaworld":
        trials = sorted(
            (k for k in metrics if re.fullmatch(r"test/Trial \d+ Success", k)), key=lambda k: int(k.split()[1])
        )
        print(f"  success (any attempt) {metrics['test/Success']:.3f}")
        print("  per attempt: " + ", ".join(f"{k.split()[1]} {metrics[k]:.3f}" for k in trials))
        staying = [f"{k} Fraction" for k in trials]
        if all(k in metrics for k in staying):  # the share of each attempt's steps that were successful
            print("  steps successful per attempt: " + ", ".join(f"{metrics[k]:.3f}" for k in staying))
        closest = [f"test/Trial {k.split()[1]} Min Distance" for k in trials]
        if all(k in metrics for k in closest):  # mean over meta-episodes of each attempt's closest approach
            print("  min distance to target (m) per attempt: " + ", ".join(f"{metrics[k]:.3f}" for k in closest))
        tasks = sorted(k.split("/")[1] for k in metrics if re.fullmatch(r"test/[^/]+/Success", k))
        if len(tasks) > 1:
            print("  success by task: " + ", ".join(f"{t} {metrics[f'test/{t}/Success']:.2f}" for t in tasks))
        return metrics
    env = make_env()
    per_episode = sorted((k for k in metrics if k.startswith("test/Episode ")), key=lambda k: int(k.split()[1]))
    refs = f"random {env.random_return():.2f}, best {env.best_return():.2f}"
    if isinstance(env, DarkRoom):
        refs += f", best searching the whole grid {env.best_return('grid'):.2f}"
    print(f"  ({refs})")
    print("  per episode: " + ", ".join(f"{k.split()[1]} {metrics[k]:.2f}" for k in per_episode))
    return metrics


if __name__ == "__main__":
    main()
