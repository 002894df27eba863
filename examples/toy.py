"""Train the transformer agent on the built-in meta-bandit and print the return of each pull.

python examples/bandit.py                      # configs/bandit.gin, about a minute on CPU
python examples/bandit.py --gin "MetaBandit.n_arms = 4" --epochs 12
"""

from __future__ import annotations

import argparse
import os

from amago_like import DiskTrajDataset, Experiment, MetaBandit
from amago_like.cli import add_common_args, configure_from_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    buffer_dir = os.path.abspath(args.buffer_dir)
    configure_from_args(args, [os.path.join(ROOT, "configs", "bandit.gin")])

    run_name = args.run_name or "bandit"
    experiment = Experiment(
        run_name=run_name,
        ckpt_base_dir=buffer_dir,
        dataset=DiskTrajDataset(dset_root=buffer_dir, dset_name=run_name),
        make_train_env=MetaBandit,
        make_val_env=MetaBandit,
    )
    try:
        experiment.start()
        metrics = experiment.learn()
        experiment.save_checkpoint()
    finally:
        experiment.close()
    env = MetaBandit()
    pulls = sorted((k for k in metrics if k.startswith("val/Episode ")), key=lambda k: int(k.split()[1]))
    print(
        f"\nval return {metrics.get('val/return', float('nan')):.2f} (random {env.random_return():.2f}, best {env.best_return():.2f})"
    )
    print("return per pull: " + ", ".join(f"{k.split('/')[1].replace(' Return', '')} {metrics[k]:.2f}" for k in pulls))
    print(f"results in {experiment.run_dir}")
    return metrics


if __name__ == "__main__":
    main()
