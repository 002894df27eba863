"""Train a transformer meta-RL agent on Meta-World (ML10, ML45 or an ML1 task) and evaluate on held-out tasks.

python examples/metaworld.py --benchmark ml10                     # short CPU run (configs/metaworld/quick.gin)
python examples/metaworld.py --benchmark ml10 --configs configs/metaworld/ml10.gin   # full size, one GPU
python examples/metaworld.py --benchmark reach-v3 --configs configs/metaworld/ml1.gin --gin "Experiment.epochs=10"
"""

from __future__ import annotations

import argparse
import os
import sys

# this file is named like the `metaworld` package: keep its folder off the import path
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != HERE]

# torch, accelerate and Meta-World load inside main(), after the flags parsed: --help stays instant
from amago_like.cli import add_common_args, configure_from_args, train  # noqa: E402

ROOT = os.path.dirname(HERE)
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "metaworld", "quick.gin")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--benchmark", default="ml10", help="ml10, ml45 or an ML1 task name such as reach-v3 (default: %(default)s)"
    )
    parser.add_argument(
        "--k_episodes",
        type=int,
        default=None,
        metavar="K",
        help="attempts per meta-episode (Metaworld.k_episodes; default: the value in the gin config)",
    )
    add_common_args(parser, default_configs="configs/metaworld/quick.gin")
    args = parser.parse_args(argv)

    from amago_like import Metaworld
    from amago_like.envs.builtin.metaworld import normalize_benchmark_name

    # fail on a bad benchmark name before anything slow happens
    try:
        normalize_benchmark_name(args.benchmark)
    except ValueError as e:
        sys.exit(f"error: {e}")
    # the benchmark goes through gin, so the run's config.gin records it (python -m amago_like.evaluate reads it back)
    bindings = [f"Metaworld.benchmark_name = {args.benchmark!r}"]
    bindings += [f"Metaworld.k_episodes = {args.k_episodes}"] if args.k_episodes else []
    run_name = args.run_name or f"metaworld_{args.benchmark}"
    buffer_dir = os.path.abspath(args.buffer_dir)
    configure_from_args(args, [DEFAULT_CONFIG], bindings, run_dir=os.path.join(buffer_dir, run_name))

    experiment, metrics = train(Metaworld, buffer_dir, run_name, resume=args.resume)
    if not experiment.is_main:  # under DDP every process has the same results: one prints them
        return metrics
    run_dir = experiment.run_dir
    print(f"\nresults in {run_dir}:")
    print(f"  metrics  {os.path.join(run_dir, 'metrics.jsonl')}  (plots in {os.path.join(run_dir, 'plots')})")
    print(f"  ckpts    {os.path.join(run_dir, 'ckpts')}")
    print(f"  config   {os.path.join(run_dir, 'config.gin')}")
    success = {
        k: v for k, v in metrics.items() if k.startswith("val/") and k.endswith("/Success") and k.count("/") == 2
    }
    if success:
        print(
            "held-out success by task (last evaluation): "
            + ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in success.items())
        )
    return metrics


if __name__ == "__main__":
    main()
