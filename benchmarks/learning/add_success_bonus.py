"""Add a success bonus to the rewards already in a Meta-World run's buffer, in place.

A run continued with ``KEpisodeMetaworld.success_bonus = B`` would otherwise learn from a buffer whose
older steps lack the bonus. A step succeeded exactly when the simulator paid its full reward
(``--success_reward``: 10.0 for reach-v3, whose reward is 10 inside the 5 cm success radius and
below 10 outside it); those steps get ``B`` added, in ``rews`` and in the previous-reward input
``rl2s[:, 0]`` of the next timestep.

    python benchmarks/learning/add_success_bonus.py runs/learning/ml1_reach_sampled --bonus 10
"""

from __future__ import annotations

import argparse
import os
import zipfile

import numpy as np
from tqdm import tqdm

from amago_like.data import DiskTrajDataset, load_trajectory
from amago_like.data.trajectory import write_trajectory


def file_format(path: str) -> str:
    if path.endswith(".traj"):
        return "traj"
    with zipfile.ZipFile(path) as z:
        stored = all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    return "npz" if stored else "npz-compressed"


def add_bonus(run_dir: str, bonus: float, success_reward: float) -> tuple[int, int]:
    """Relabel every trajectory file of ``run_dir/buffer``; returns (steps, successful steps)."""
    run_dir = os.path.abspath(run_dir)
    files = []
    if os.path.isdir(os.path.join(run_dir, "buffer")):  # the dataset would create a missing one
        files = DiskTrajDataset(os.path.dirname(run_dir), os.path.basename(run_dir), cache_mb=0).files
    if not files:
        raise SystemExit(f"no trajectory files under {run_dir}/buffer")
    steps = hits = 0
    for path in tqdm(files, desc="relabelling"):
        traj = load_trajectory(path)
        if traj.rews.max(initial=-np.inf) > success_reward:
            raise SystemExit(
                f"{path} already has rewards above {success_reward}: was the bonus added before? Nothing after "
                "this file was changed; the files before it now carry the bonus"
            )
        inside = traj.rews == success_reward  # (T, 1)
        traj.rews = traj.rews + np.float32(bonus) * inside
        traj.rl2s[:, 0] += np.float32(bonus) * (traj.rl2s[:, 0] == success_reward)  # (T+1,) previous rewards
        write_trajectory(traj, path, file_format(path))
        steps, hits = steps + inside.size, hits + int(inside.sum())
    return steps, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--bonus", type=float, required=True)
    parser.add_argument("--success_reward", type=float, default=10.0, help="the simulator's reward at success")
    args = parser.parse_args()
    steps, hits = add_bonus(args.run_dir, args.bonus, args.success_reward)
    print(f"{args.run_dir}: {steps} steps relabelled, {hits / steps:.3f} of them successful (+{args.bonus:g})")


if __name__ == "__main__":
    main()
