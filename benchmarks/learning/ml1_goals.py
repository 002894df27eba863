"""Which goals of an ML1 task fail, across runs: per-goal success from ``--each_goal`` evaluations.

    python benchmarks/learning/ml1_goals.py docs/results/ml1_defaults_stop48/k-attempt_test_goals_s*.csv

Each CSV is one run's ``k-attempt`` evaluation of every held-out goal once (``python -m amago_like.evaluate RUN
--protocol k-attempt --each_goal``), all of the same ML1 task; with ``--split train``, of every training goal
(``evaluate ... --split train``, whose CSV is ``k-attempt_train_goals.csv``). The script prints, per goal, the share
of runs that succeeded in the scored attempt (the last, unless ``--attempt``), the goal's position and its distance
to the nearest training goal (another one, for a training goal); then how many goals every run reached and how many
none did, beside what independent draws at the runs' mean success would give. Far more goals reached by every run
and by none than independent draws give say the failures belong to where the goals lie rather than to chance.
"""

from __future__ import annotations

import argparse
import csv
import pickle

import numpy as np

from amago_like.envs.builtin.metaworld_benchmarks import get_benchmark


def read_goal_success(paths: list[str], attempt: int | None) -> tuple[str, np.ndarray, np.ndarray]:
    """(task, task indices (G,), success (runs, G)) from ``_goals.csv`` files of one ML1 task."""
    task, indices, runs = None, None, []
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise SystemExit(f"{path}: no goal rows")
        attempts = sorted(int(k.split()[1]) for k in rows[0] if k.startswith("attempt "))
        scored = attempts[-1] if attempt is None else attempt
        if scored not in attempts:
            raise SystemExit(f"{path}: no 'attempt {scored}' column (it has attempts {attempts[0]}-{attempts[-1]})")
        tasks = {r["task"] for r in rows}
        run_indices = np.array([int(r["task_index"]) for r in rows])
        if len(tasks) != 1 or (task is not None and tasks != {task}):
            raise SystemExit(
                f"{path}: holds {sorted(tasks)}; every file must hold the goals of one and the same ML1 task"
            )
        if indices is not None and not np.array_equal(indices, run_indices):
            raise SystemExit(f"{path}: its goals differ from {paths[0]}'s; evaluate every run with --each_goal")
        task, indices = tasks.pop(), run_indices
        runs.append([float(r[f"attempt {scored}"]) for r in rows])
    return task, indices, np.array(runs)


def goal_positions(tasks) -> np.ndarray:
    """(N, 3): the last three entries of each task's random vector, which is the goal's position in reach-v3,
    push-v3 and pick-place-v3 (tasks whose vector holds only an object's place give that place instead)."""
    return np.array([pickle.loads(t.data)["rand_vec"][-3:] for t in tasks])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csvs", nargs="+", help="k-attempt *_goals.csv files, one per run, of one ML1 task")
    parser.add_argument("--attempt", type=int, default=None, help="the attempt scored (default: the last)")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="the split the CSVs evaluated")
    parser.add_argument("--benchmark_seed", type=int, default=0, help="KEpisodeMetaworld.benchmark_seed of the runs")
    parser.add_argument("--draws", type=int, default=2000, help="independent draws for the 'if goals were alike' line")
    args = parser.parse_args(argv)

    task, indices, success = read_goal_success(args.csvs, args.attempt)
    bench = get_benchmark(task, args.benchmark_seed)
    train = goal_positions(bench.train_tasks)
    goals = (goal_positions(bench.test_tasks) if args.split == "test" else train)[indices]  # (G, 3)
    distance = np.linalg.norm(goals[:, None] - train[None], axis=-1)  # (G, N)
    if args.split == "train":  # a training goal's nearest is another one
        distance[np.arange(len(indices)), indices] = np.inf
    nearest = distance.min(axis=1)  # (G,)
    per_goal = success.mean(axis=0)  # (G,)

    print(f"{task}: {success.shape[1]} {args.split} goals x {success.shape[0]} runs, mean success {success.mean():.3f}")
    print("goal  success  position (m)              nearest training goal (m)")
    for g in np.argsort(per_goal, kind="stable"):
        x, y, z = goals[g]
        print(f"{indices[g]:4d}  {per_goal[g]:7.2f}  ({x:+.3f}, {y:+.3f}, {z:+.3f})  {nearest[g]:.3f}")
    rng = np.random.default_rng(0)
    draws = rng.random((args.draws, *success.shape)) < success.mean()  # (D, runs, G)
    alike_all, alike_none = draws.all(axis=1).sum(-1).mean(), (~draws).all(axis=1).sum(-1).mean()
    print(
        f"reached by every run: {int((per_goal == 1).sum())} goals, by none: {int((per_goal == 0).sum())} "
        f"(independent draws at the mean success: {alike_all:.1f} and {alike_none:.1f})"
    )
    if per_goal.std() > 0:
        r = np.corrcoef(per_goal, nearest)[0, 1]
        print(f"correlation of success with the nearest training goal's distance: {r:+.2f}")


if __name__ == "__main__":
    main()
