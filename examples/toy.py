"""Train the transformer agent on a built-in meta-RL env and print the return of each episode.

python examples/toy.py                          # meta-bandit, configs/bandit.gin, about a minute on CPU
python examples/toy.py --env dark_room          # dark room, configs/dark_room.gin
python examples/toy.py --gin "MetaBandit.n_arms = 4" --epochs 12
"""

from __future__ import annotations

import argparse
import os

# torch, accelerate and the envs load inside main(), after the flags parsed: --help stays instant
from amago_like.cli import add_common_args, configure_from_args, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"bandit": "bandit.gin", "dark_room": "dark_room.gin"}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--env", choices=sorted(CONFIGS), default="bandit", help="built-in meta-RL env (default: %(default)s)"
    )
    add_common_args(parser, default_configs="configs/bandit.gin or configs/dark_room.gin, after --env")
    args = parser.parse_args(argv)

    from amago_like import DarkRoom, MetaBandit

    env_type, config = {"bandit": MetaBandit, "dark_room": DarkRoom}[args.env], CONFIGS[args.env]
    buffer_dir = os.path.abspath(args.buffer_dir)
    run_name = args.run_name or args.env
    configure_from_args(args, [os.path.join(ROOT, "configs", config)], run_dir=os.path.join(buffer_dir, run_name))

    experiment, metrics = train(env_type, buffer_dir, run_name, resume=args.resume)
    if not experiment.is_main:  # under DDP every process has the same results: one prints them
        return metrics
    env = env_type(split="test")
    # held-out dark-room goals lie in cells never rewarded in training: the reference searches every cell
    best = env.best_return("grid") if isinstance(env, DarkRoom) else env.best_return()
    episodes = sorted((k for k in metrics if k.startswith("val/Episode ")), key=lambda k: int(k.split()[1]))
    print(
        f"\nheld-out return {metrics.get('val/return', float('nan')):.2f} "
        f"(random {env.random_return():.2f}, best {best:.2f})"
    )
    print("return per episode: " + ", ".join(f"{k.split()[1]} {metrics[k]:.2f}" for k in episodes))
    print(f"results in {experiment.run_dir}")
    return metrics


if __name__ == "__main__":
    main()
