"""Evaluate a trained toy-env run's policy on a chosen goal split, without exploration noise.

The run's own evaluations use the held-out split; this one also shows how the policy does on fresh
meta-episodes drawn like its training ones (``--split train``), which separates "has not learned the
search" from "does not carry it over to goal cells it never saw rewarded".

    python benchmarks/learning/eval_split.py runs/learning/dark_room --split train --episodes 64
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile

import gin

from amago_like import DarkRoom, DiskTrajDataset, Experiment, MetaBandit

ENVS = {"dark_room": DarkRoom, "bandit": MetaBandit}  # the names examples/toy.py takes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--env", choices=sorted(ENVS), default="dark_room")
    parser.add_argument("--split", default="train")
    parser.add_argument("--episodes", type=int, default=64, help="meta-episodes to average over")
    args = parser.parse_args()
    env_type = ENVS[args.env]
    gin.parse_config_file(os.path.join(args.run_dir, "config.gin"))
    make_env = functools.partial(env_type, split=args.split)
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(
            run_name="eval",
            ckpt_base_dir=tmp,
            dataset=DiskTrajDataset(tmp, "eval"),
            make_train_env=make_env,
            make_val_env=make_env,
            exploration_wrapper_type=None,
            verbose=False,
        )
        exp.start()
        try:
            exp.load_checkpoint_from_path(os.path.join(args.run_dir, "ckpts", "latest", "policy.pt"), False)
            metrics = exp.evaluate_test(make_env, timesteps=10**6, episodes=args.episodes)
        finally:
            exp.close()
    env = make_env()
    per_episode = sorted((k for k in metrics if k.startswith("test/Episode ")), key=lambda k: int(k.split()[1]))
    refs = f"random {env.random_return():.2f}, best {env.best_return():.2f}"
    if isinstance(env, DarkRoom):
        refs += f", best searching the whole grid {env.best_return('grid'):.2f}"
    print(
        f"{args.run_dir} on the {args.split} split, {args.episodes} meta-episodes: return {metrics['test/return']:.2f}"
    )
    print(f"  ({refs})")
    print("  per episode: " + ", ".join(f"{k.split()[1]} {metrics[k]:.2f}" for k in per_episode))


if __name__ == "__main__":
    main()
