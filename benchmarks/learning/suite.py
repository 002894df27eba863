"""The learning suite: train the DEFAULT agent on several small meta-RL tasks and score it.

python benchmarks/learning/suite.py                         # every toy task, 3 seeds
python benchmarks/learning/suite.py --tasks tmaze point_sparse --seeds 0
python benchmarks/learning/suite.py --quick                 # one seed, short budgets: a CI smoke run
python benchmarks/learning/suite.py --tasks reach --seeds 0 1   # Meta-World ML1 reach-v3 (long)
python benchmarks/learning/suite.py --gin "Agent.tau = 0.01"    # the same suite with one binding changed
python benchmarks/learning/suite.py --compare BASE.jsonl --to NEW.jsonl   # two results files, seed by seed
python benchmarks/learning/suite.py --tasks dark_room --updates_x 2   # off the budget: 2x updates, same env steps
python benchmarks/learning/suite.py --tasks dark_room --epochs_x 2    # off the budget: 2x epochs (env steps, updates)
python benchmarks/learning/suite.py --overlap                  # each run collects while it learns (2 processes)

Each task binds only its env, its context (``max_seq_len``, the meta-episode's length), its budget
(epochs, env steps and updates per epoch) and ``parallel_actors``; everything else is the library's
gin defaults, so the suite measures what a new user gets. After training, the policy is evaluated
on the task's held-out split twice: as the experiment evaluates (``Experiment.eval_sample_actions``; by
default sampled actions, as in training), the row's ``score``, and acting with the policy's mode, its
``score_mode`` (``--score mode`` reads those instead). The score is normalised per task,
random play = 0 and the task's reference return = 1, and aggregated across tasks and seeds as an
interquartile mean (IQM) with a 95% stratified bootstrap confidence interval.

Results go to ``--out`` (default ``runs/suite``): one run folder per task and seed, ``results.jsonl``
(one row per finished run, appended as runs finish) and ``table.md``. ``--table_from A.jsonl B.jsonl``
prints the table of earlier results (rescored against today's references); ``--compare`` sets a candidate's
results beside a baseline's on the seeds both have, with the change of every task's mean and its
bootstrap CI over seeds (a change inside its seeds' spread is not evidence either way); each side holds one row
per task and seed, so one setting's rows go in a file of their own.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence

import gin
import gymnasium as gym
import numpy as np
import torch

from amago_like import DarkRoom, DiskTrajDataset, Experiment, MetaBandit, PointDynamics, PointGoal, TMaze
from amago_like.cli import run
from amago_like.config import bound_parameters
from amago_like.overlap import overlapped
from amago_like.stats import iqm, paired_difference_ci, stratified_bootstrap_ci


@dataclasses.dataclass(frozen=True)
class Budget:
    epochs: int
    steps_per_epoch: int  # per actor
    updates_per_epoch: int


@dataclasses.dataclass(frozen=True)
class Task:
    """One suite task: an env factory ``make_env(split)`` with its reference and random returns."""

    name: str
    kind: str
    make_env: Callable[..., gym.Env]
    max_seq_len: int
    parallel_actors: int
    budget: Budget
    quick: Budget  # --quick: the bandit learns within it; the others only run end to end
    eval_episodes: int
    reference: str  # what the reference return is
    reference_kwargs: tuple = ()  # for the held-out env's best_return
    # (random, reference) for envs without best_return / random_return (a success rate: 0 and 1)
    bounds: tuple[float, float] | None = None

    def env(self, split: str) -> gym.Env:
        return self.make_env(split=split)

    def reference_return(self) -> float:
        if self.bounds is not None:
            return self.bounds[1]
        return float(self.env("test").best_return(**dict(self.reference_kwargs)))

    def random_return(self) -> float:
        if self.bounds is not None:
            return self.bounds[0]
        return float(self.env("test").random_return())


def _reach(split: str):
    from amago_like import Metaworld

    return Metaworld("reach-v3", split, 3, max_episode_length=150)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "bandit",
            "discrete, 3 arms x 6 pulls",
            functools.partial(MetaBandit, 3, 6),
            7,
            8,
            Budget(10, 30, 100),
            Budget(5, 30, 100),
            400,
            "optimal explore-then-exploit",
        ),
        Task(
            "bandit_noisy",
            "discrete, 5 arms x 12 pulls, payoffs 0.8 / 0.2",
            functools.partial(MetaBandit, 5, 12, good_prob=0.8, bad_prob=0.2),
            13,
            8,
            Budget(16, 48, 100),
            Budget(1, 13, 10),
            400,
            "Bayes-greedy searcher that knows the payoffs",
        ),
        Task(
            "dark_room",
            "discrete gridworld 5x5, invisible goal, 3 x 12 steps, held-out goal cells",
            functools.partial(DarkRoom, 5, 12, 3),
            37,
            16,
            Budget(15, 72, 100),
            Budget(1, 37, 10),
            200,
            "searcher over every cell (held-out goal cells were never rewarded in training)",
            (("search", "grid"),),
        ),
        Task(
            "point_dense",
            "continuous 2-D point robot, hidden goal, 3 x 25 steps, dense reward",
            functools.partial(PointGoal, "dense", 25, 3),
            76,
            8,
            Budget(10, 75, 100),
            Budget(1, 76, 10),
            120,
            "infers the goal from the first reward",
        ),
        Task(
            "point_sparse",
            "continuous 2-D point robot, hidden goal, 3 x 25 steps, sparse reward",
            functools.partial(PointGoal, "sparse", 25, 3),
            76,
            8,
            Budget(10, 75, 100),
            Budget(1, 76, 10),
            120,
            "sweeps the circle, then returns",
        ),
        Task(
            "point_dynamics",
            "continuous 2-D point robot, visible goals, actions turned by a hidden angle, 3 x 25 steps, dense reward",
            functools.partial(PointDynamics, 25, 3),
            76,
            8,
            Budget(12, 300, 150),  # the owners' held-out hidden-dynamics budget: at point_dense's, nothing learns
            Budget(1, 76, 10),
            120,
            "reads the angle off its first move",
        ),
        Task(
            "tmaze",
            "discrete, cue at step 0, turn 100 steps later",
            functools.partial(TMaze, 100),
            102,
            8,
            Budget(8, 101, 100),
            Budget(1, 102, 10),
            200,
            "remembers the cue",
        ),
        Task(
            "reach",
            "Meta-World ML1 reach-v3, 3 x 150 steps, 50 held-out goals",
            _reach,
            64,
            8,
            Budget(80, 450, 80),
            Budget(1, 150, 10),
            50,
            "success in every attempt (return: success rate of the final attempt)",
            bounds=(0.0, 1.0),
        ),
    )
}
TOY_TASKS = [name for name in TASKS if name != "reach"]
# diagnostics off the suite's budget: each flag multiplies one field of every task's Budget. A row made with one
# names it among its bindings, so that it is never read as a suite result
OFF_BUDGET = {  # flag: (the Budget field, what N times of it means)
    "--updates_x": ("updates_per_epoch", "updates, at the same env steps"),
    "--epochs_x": ("epochs", "epochs: env steps and updates alike"),
}


@dataclasses.dataclass
class Result:
    task: str
    seed: int
    env_steps: int
    updates: int
    wall_s: float
    ret: float
    per_episode: list[float]
    score: float
    bindings: list[str]
    # the same policy evaluated acting with its mode (None in rows made before it was recorded)
    ret_mode: float | None = None
    per_episode_mode: list[float] | None = None
    score_mode: float | None = None

    def row(self) -> dict:
        return dataclasses.asdict(self)


#: --score: which of a row's evaluations the table and --compare read
SCORES = ("experiment", "mode")


def scored_by(results: Sequence[Result], which: str) -> list[Result]:
    """``results`` with ``score``, ``ret`` and ``per_episode`` taken from the ``which`` evaluation ("mode": acting
    with the policy's mode; rows without one are left out, so that no table mixes the two)."""
    if which == "experiment":
        return list(results)
    return [
        dataclasses.replace(r, ret=r.ret_mode, per_episode=r.per_episode_mode, score=r.score_mode)
        for r in results
        if r.ret_mode is not None
    ]


def _episode_returns(metrics: dict[str, float], prefix: str = "test") -> list[float]:
    keys = sorted(
        (k for k in metrics if k.startswith(f"{prefix}/Episode ") and k.endswith(" Return") and k.count("/") == 1),
        key=lambda k: int(k.split()[1]),
    )
    return [metrics[k] for k in keys]


def load_results(path: str) -> list[Result]:
    """The rows of a results.jsonl, scored against today's references."""
    rows = [Result(**json.loads(line)) for line in open(path) if line.strip()]
    for r in rows:
        r.score = float(normalized(TASKS[r.task], r.ret))
        if r.ret_mode is not None:
            r.score_mode = float(normalized(TASKS[r.task], r.ret_mode))
    return rows


def normalized(task: Task, ret: float) -> float:
    lo, hi = task.random_return(), task.reference_return()
    return (ret - lo) / (hi - lo)


def _budget(task: Task, quick: bool, off_budget: dict[str, int] | None) -> tuple[Budget, list[str]]:
    """The task's budget (``--quick``'s or the suite's), times the ``off_budget`` multipliers, and the flags that
    name those multipliers in a row's bindings."""
    budget, flags = task.quick if quick else task.budget, []
    for flag, times in (off_budget or {}).items():
        if times != 1:
            field = OFF_BUDGET[flag][0]
            budget = dataclasses.replace(budget, **{field: getattr(budget, field) * times})
            flags.append(f"{flag} {times}")
    return budget, flags


# What the suite passes to each run itself, so a --gin binding of it would be silently overridden; the hint says
# which flag sets it instead.
SET_BY_SUITE = {
    "Experiment": {
        **dict.fromkeys(("epochs", "train_timesteps_per_epoch", "train_batches_per_epoch"), "--epochs_x / --updates_x"),
        "seed": "--seeds",
        "overlap": "--overlap",
        "role": "--overlap",
        "verbose": None,
        **dict.fromkeys(("run_name", "ckpt_base_dir"), "--out"),
        **dict.fromkeys(
            ("max_seq_len", "make_train_env", "make_val_env", "val_timesteps_per_epoch", "parallel_actors", "env_mode"),
            "--tasks (each task's env and context)",
        ),
        **dict.fromkeys(("dataset", "val_interval"), None),
    },
    "DiskTrajDataset": dict.fromkeys(("dset_root", "dset_name"), "--out"),
}
# The suite's own defaults, which a binding may change: no checkpoints before the last epoch's weights
# (Experiment.ckpt_interval = 1 keeps every epoch's, for evaluating averaged weights afterwards).
SUITE_DEFAULTS = ("Experiment.ckpt_interval = None",)


def refused_binding(binding: str) -> str | None:
    """Why ``binding`` cannot be used with the suite (it binds a parameter the suite sets per run), or None. Read
    from gin's parse of it, as the library's own checks of passed parameters are (``config.refuse_passed``)."""
    _bind([binding])
    for child, passed in SET_BY_SUITE.items():
        for param in sorted(bound_parameters(child) & set(passed)):
            fix = f"use {passed[param]}" if passed[param] else "it is part of the suite's protocol"
            return f"--gin {binding!r}: the suite sets {child}.{param} for every run itself; {fix}"
    return None


def _bind(bindings: Sequence[str]) -> None:
    """Gin's configuration: the library's defaults, the suite's (SUITE_DEFAULTS), then ``bindings`` over them
    (nothing left from a run before)."""
    gin.clear_config()
    for b in (*SUITE_DEFAULTS, *bindings):
        gin.parse_config(b)


def _run_name(task: Task, seed: int) -> str:
    return f"{task.name}_s{seed}"


def _experiment(task: Task, seed: int, out: str, budget: Budget, **overlap_role) -> Experiment:
    """The suite's Experiment for ``task``: env, context, budget and actors bound, the rest gin's (defaults plus
    the parsed bindings); ``overlap_role``: ``overlap`` and ``role`` of an overlapped run's processes."""
    run_name = _run_name(task, seed)
    return Experiment(
        run_name=run_name,
        ckpt_base_dir=out,
        max_seq_len=task.max_seq_len,
        dataset=DiskTrajDataset(dset_root=out, dset_name=run_name),
        make_train_env=functools.partial(task.make_env, split="train"),
        make_val_env=functools.partial(task.make_env, split="test"),
        val_timesteps_per_epoch=task.max_seq_len,
        parallel_actors=task.parallel_actors,
        env_mode="sync",
        epochs=budget.epochs,
        train_timesteps_per_epoch=budget.steps_per_epoch,
        train_batches_per_epoch=budget.updates_per_epoch,
        val_interval=max(budget.epochs // 5, 1),
        seed=seed,
        verbose=False,
        **overlap_role,
    )


def collector_argv(
    task: Task, seed: int, out: str, quick: bool, bindings: Sequence[str], off_budget: dict[str, int] | None
) -> list[str]:
    """The command line of an overlapped suite run's collector: this script, rebuilding the same run with
    ``--mode collect`` (1 torch thread)."""
    argv = [sys.executable, os.path.abspath(__file__), "--tasks", task.name, "--seeds", str(seed)]
    argv += ["--out", os.path.abspath(out), "--overlap", "--mode", "collect", "--threads", "1"]
    argv += ["--quick"] if quick else []
    for b in bindings:
        argv += ["--gin", b]
    for flag, times in (off_budget or {}).items():
        argv += [flag, str(times)]
    return argv


def run_task(
    task: Task,
    seed: int,
    out: str,
    quick: bool = False,
    bindings: Sequence[str] = (),
    off_budget: dict[str, int] | None = None,
    overlap: bool = False,
) -> Result:
    """Train the default agent on ``task`` (only env, context, budget and actors bound) and evaluate it.
    ``off_budget``: multipliers of the budget by :data:`OFF_BUDGET` flag (``{"--updates_x": 2}``: twice the
    updates per epoch, at the same env steps), diagnostics the row's bindings name. ``overlap``: collect while
    learning (``Experiment.overlap``; a collector process steps the envs), at the same env steps and updates; the
    row's bindings name it."""
    _bind(bindings)
    budget, flags = _budget(task, quick, off_budget)
    command = collector_argv(task, seed, out, quick, bindings, off_budget) if overlap else None
    bindings = [*bindings, *flags, *(["--overlap"] if overlap else [])]
    run_name = _run_name(task, seed)
    if os.path.exists(os.path.join(out, run_name)):
        shutil.rmtree(os.path.join(out, run_name))
    start = time.time()
    experiment = _experiment(task, seed, out, budget, overlap=overlap)
    try:
        with overlapped(experiment, command):  # overlap: the collector steps the envs meanwhile
            experiment.start()
            experiment.learn()
        episodes = max(task.eval_episodes // 4, 8) if quick else task.eval_episodes
        if task.name == "reach":
            ret, per_episode = _evaluate_each_goal(experiment, task)
        else:
            ret, per_episode = _evaluate(experiment, task, episodes)
        result = Result(
            task.name,
            seed,
            int(experiment.total_frames),
            int(experiment.grad_updates),
            round(time.time() - start, 1),  # training and the experiment's own evaluation
            float(ret),
            [round(float(r), 3) for r in per_episode],
            float(normalized(task, ret)),
            list(bindings),
        )
        if task.name != "reach":  # the same policy again, acting with its mode
            ret_mode, per_episode_mode = ret, per_episode
            if experiment.eval_sample_actions:
                experiment.eval_sample_actions = False
                ret_mode, per_episode_mode = _evaluate(experiment, task, episodes)
            result.ret_mode, result.score_mode = float(ret_mode), float(normalized(task, ret_mode))
            result.per_episode_mode = [round(float(r), 3) for r in per_episode_mode]
    finally:
        experiment.close()
        # the buffer only: the run folder's metrics, plots and config stay for reading the curves
        shutil.rmtree(os.path.join(out, run_name, "buffer"), ignore_errors=True)
    return result


def collect_task(
    task: Task, seed: int, out: str, quick: bool, bindings: Sequence[str], off_budget: dict[str, int] | None
) -> None:
    """An overlapped suite run's collector (``--mode collect``, spawned by :func:`run_task`): steps the task's
    training envs into the run's buffer with the learner's newest policy until the learner is done, as
    ``amago_like.cli.run`` runs any collector."""
    _bind(bindings)
    run(_experiment(task, seed, out, _budget(task, quick, off_budget)[0], overlap=True, role="collect"))


def _evaluate(experiment: Experiment, task: Task, episodes: int) -> tuple[float, list[float]]:
    """(return, return per episode) of ``episodes`` held-out meta-episodes, acting as the experiment evaluates."""
    metrics = experiment.evaluate_test(functools.partial(task.env, "test"), timesteps=10**9, episodes=episodes)
    return metrics["test/return"], _episode_returns(metrics)


def _evaluate_each_goal(experiment: Experiment, task: Task) -> tuple[float, list[float]]:
    """ML1 reach-v3: every held-out goal played once, by ``amago_like.evaluate`` on the run's latest
    policy; returns (final-attempt success, success per attempt)."""
    from amago_like.evaluate import Evaluator

    bindings = ['Metaworld.benchmark_name = "reach-v3"', "Metaworld.k_episodes = 3"]
    bindings.append("Metaworld.max_episode_length = 150")
    evaluator = Evaluator(experiment.run_dir, bindings, env="metaworld", max_seq_len=task.max_seq_len)
    metrics = evaluator.evaluate("test", each_goal=True)
    attempts = [metrics[f"test/Trial {i} Success"] for i in (1, 2, 3)]
    return float(attempts[-1]), attempts


# ---------------------------------------------------------------------------------------------- statistics
def score_matrix(results: Sequence[Result], tasks: Sequence[str]) -> np.ndarray:
    """(seeds, tasks) normalised scores; tasks with fewer seeds repeat their mean to fill."""
    return _seeds_by_tasks({t: [r.score for r in results if r.task == t] for t in tasks})


def _seeds_by_tasks(by_task: dict[str, list[float]]) -> np.ndarray:
    """(seeds, tasks) matrix of each task's scores; tasks with fewer seeds repeat their mean to fill."""
    n = max(len(v) for v in by_task.values())
    cols = [v + [float(np.mean(v))] * (n - len(v)) for v in by_task.values()]
    return np.array(cols).T


def table(results: Sequence[Result]) -> str:
    tasks = list(dict.fromkeys(r.task for r in results))
    lines = [
        "| task | seed | env steps | updates | wall s | return | per episode | normalized |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.task} | {r.seed} | {r.env_steps} | {r.updates} | {r.wall_s:.0f} | {r.ret:.3f} | "
            f"{', '.join(f'{x:.2f}' for x in r.per_episode)} | {r.score:.3f} |"
        )
    lines.append("")
    lines.append("| task | reference | random | mean normalized |")
    lines.append("|---|---|---|---|")
    for t in tasks:
        task = TASKS[t]
        mean = np.mean([r.score for r in results if r.task == t])
        lines.append(f"| {t} | {task.reference_return():.3f} | {task.random_return():.3f} | {mean:.3f} |")
    lines.append("")
    lines.append(iqm_line(results))
    return "\n".join(lines)


def iqm_line(results: Sequence[Result], what: str = "normalized scores") -> str:
    tasks = list(dict.fromkeys(r.task for r in results))
    scores = score_matrix(results, tasks)
    lo, hi = stratified_bootstrap_ci(scores)
    return f"IQM of {what}: {iqm(scores):.3f} (95% CI {lo:.3f} to {hi:.3f}) over {len(tasks)} tasks"


class DuplicateRowsError(ValueError):
    """One side of ``--compare`` has two rows of one task and seed (a usage error, told as one line)."""


def _scores_by_run(results: Sequence[Result], side: str) -> dict[tuple[str, int], float]:
    """{(task, seed): score}; two rows of one task and seed (two settings' rows in one file, or one file given
    twice) would leave one of them out unseen, so they are refused."""
    rows: dict[tuple[str, int], Result] = {}
    for r in results:
        if (first := rows.setdefault((r.task, r.seed), r)) is not r:
            raise DuplicateRowsError(
                f"the {side} has two rows for {r.task} seed {r.seed} (bindings {first.bindings} and {r.bindings}): "
                "compare one setting's rows at a time (split the file, or name each file once)"
            )
    return {key: r.score for key, r in rows.items()}


def compare(baseline: Sequence[Result], candidate: Sequence[Result]) -> str:
    """Baseline and candidate side by side on the (task, seed) pairs both have: each task's scores by seed, the
    change of its mean with a bootstrap CI of the per-seed changes (two or more seeds; with three it is a rough guide,
    not a test) and on how many seeds it rose and fell, the IQM of each, the tasks whose mean fell (the suite's rule:
    a default changes only if the IQM rises or holds and no task drops) and the tasks whose change is larger than
    the spread of its per-seed changes."""
    base, cand = _scores_by_run(baseline, "baseline"), _scores_by_run(candidate, "candidate")
    lines = [
        "| task | seeds | baseline | mean | candidate | mean | change | 95% CI of the change (paired) | seeds up, down |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    change_ci: dict[str, tuple[float, float]] = {}  # tasks with two or more seeds: one seed has no spread
    for t in dict.fromkeys(task for task, _ in base):
        seeds = sorted(s for task, s in base if task == t and (t, s) in cand)
        if not seeds:
            continue
        before[t], after[t] = [base[t, s] for s in seeds], [cand[t, s] for s in seeds]
        b, c = np.mean(before[t]), np.mean(after[t])
        ci = "one seed: no spread to compare with"
        if len(seeds) > 1:
            lo, hi = change_ci[t] = paired_difference_ci(before[t], after[t])
            ci = f"{lo:+.3f} to {hi:+.3f}"
        per_seed = np.subtract(after[t], before[t])
        lines.append(
            f"| {t} | {', '.join(map(str, seeds))} | {', '.join(f'{x:.3f}' for x in before[t])} | {b:.3f} | "
            f"{', '.join(f'{x:.3f}' for x in after[t])} | {c:.3f} | {c - b:+.3f} | {ci} | "
            f"{(per_seed > 0).sum()}, {(per_seed < 0).sum()} |"
        )
    if not before:
        return "no (task, seed) pair is in both the baseline and the candidate"
    lines.append("")
    for name, by_task in (("baseline", before), ("candidate", after)):
        scores = _seeds_by_tasks(by_task)
        lo, hi = stratified_bootstrap_ci(scores)
        lines.append(f"IQM, {name}: {iqm(scores):.3f} (95% CI {lo:.3f} to {hi:.3f})")
    changes = {t: float(np.mean(after[t]) - np.mean(before[t])) for t in before}
    fell = ", ".join(f"{t} ({d:+.3f})" for t, d in changes.items() if d < 0) or "none"
    lines.append(f"tasks whose mean fell: {fell} (of {len(changes)} compared)")
    # a change inside its seeds' spread is not evidence either way
    clear = [t for t, (lo, hi) in change_ci.items() if not lo <= 0.0 <= hi]
    lines.append(
        f"tasks whose change's 95% CI excludes 0: {', '.join(clear) or 'none'} (of {len(change_ci)} with a CI)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=TOY_TASKS, help="default: every toy task")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (0 with --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, short budgets: the bandit learns, the rest only runs (about 2 min)",
    )
    parser.add_argument("--out", default="runs/suite", help="folder for run folders, results.jsonl, table.md")
    parser.add_argument("--gin", action="append", default=[], help="a binding over the defaults (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one run per core)")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="collect while learning (Experiment.overlap): each run is a learner and a collector process, at the "
        "suite's env steps and updates; rows name it among their bindings",
    )
    parser.add_argument(
        "--mode", choices=["collect"], default=None, help="(internal) the collector an --overlap run spawns"
    )
    for flag, (_, what) in OFF_BUDGET.items():
        parser.add_argument(
            flag, type=int, default=1, help=f"a diagnostic off the suite's budget: N times each task's {what}"
        )
    parser.add_argument(
        "--table_from", nargs="+", default=None, metavar="JSONL", help="only print the table of earlier results files"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="JSONL",
        help="only compare earlier results: the baseline's files, then --to and the candidate's",
    )
    parser.add_argument("--to", nargs="+", default=None, metavar="JSONL", help="the candidate's files for --compare")
    parser.add_argument(
        "--score",
        choices=SCORES,
        default="experiment",
        help="which evaluation --table_from and --compare read: the experiment's own (default) or the policy's mode",
    )
    parser.add_argument(
        "--to_score",
        choices=SCORES,
        default=None,
        help="the evaluation --compare reads from the candidate's rows (default: --score's); --compare R --to R "
        "--to_score mode sets one file's two evaluations of the same policies side by side",
    )
    args = parser.parse_args(argv)
    if (args.compare is None) != (args.to is None):
        parser.error("--compare BASELINE.jsonl ... needs --to CANDIDATE.jsonl ... (and the other way round)")
    if args.compare:
        baseline = scored_by([r for path in args.compare for r in load_results(path)], args.score)
        candidate = scored_by([r for path in args.to for r in load_results(path)], args.to_score or args.score)
        try:
            print(compare(baseline, candidate))
        except DuplicateRowsError as e:
            parser.error(str(e))
        return candidate
    if args.table_from:
        results = scored_by([r for path in args.table_from for r in load_results(path)], args.score)
        if not results:
            parser.error(f"no row of {' '.join(args.table_from)} has a {args.score} evaluation")
        print(table(results))
        return results
    off_budget = {flag: getattr(args, flag[2:]) for flag in OFF_BUDGET}
    for flag, times in off_budget.items():
        if times < 1:
            parser.error(f"{flag} must be an integer >= 1, got {times}")
    for binding in args.gin:
        if (problem := refused_binding(binding)) is not None:
            parser.error(problem)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    torch.set_num_threads(args.threads)
    if args.mode == "collect":
        if not args.overlap or len(args.tasks) != 1 or len(seeds) != 1:
            parser.error("--mode collect is the collector an --overlap run spawns: one task and one seed, --overlap")
        collect_task(TASKS[args.tasks[0]], seeds[0], args.out, args.quick, args.gin, off_budget)
        return []
    os.makedirs(args.out, exist_ok=True)
    results = []
    for task_name in args.tasks:
        for seed in seeds:
            result = run_task(TASKS[task_name], seed, args.out, args.quick, args.gin, off_budget, args.overlap)
            results.append(result)
            mode = "" if result.score_mode is None else f" (acting with its mode: {result.score_mode:.3f})"
            print(
                f"{task_name} seed {seed}: return {result.ret:.3f}, normalized {result.score:.3f}{mode} "
                f"({result.env_steps} env steps, {result.updates} updates, {result.wall_s:.0f} s)",
                flush=True,
            )
            with open(os.path.join(args.out, "results.jsonl"), "a") as f:
                f.write(json.dumps(result.row()) + "\n")
    summary = table(results)
    if scored_by(results, "mode"):
        summary += "\n" + iqm_line(scored_by(results, "mode"), "normalized scores acting with the policy's mode")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(summary + "\n")
    print(summary)
    return results


if __name__ == "__main__":
    main()
