"""Run a training command over several seeds and aggregate the results.

    python -m amago_like.sweep --seeds 0 1 2 -- examples/toy.py --env dark_room --epochs 20
    python -m amago_like.sweep --seeds 0 1 2 3 4 --parallel 2 -- examples/metaworld.py --benchmark ml10 --run_name ml10
    python -m amago_like.sweep --seeds 0 1 2 --protocol k-attempt metaworld -- examples/metaworld.py \\
        --benchmark reach-v3 --configs configs/metaworld/ml1_cpu.gin
    python -m amago_like.sweep --seeds 0 1 2 --aggregate_only -- examples/toy.py     # tables of runs already made

Everything after ``--`` is the training command (a script or ``-m module`` is run with this Python; anything else
as it is, e.g. ``accelerate launch ...``). Seed S runs it with ``--seed S --run_name NAME_sS``, where NAME is the
command's own ``--run_name`` (else ``--name``, else the script's name), one seed after another or ``--parallel N``
at a time (each with ``OMP_NUM_THREADS`` = cores / N unless set). Each run's output goes to
``{buffer_dir}/NAME_sweep/logs/seed_S.log``.

The score of a run on a task is the last evaluation in its metrics.jsonl (``val/<task>/<metric>``; ``--metric``,
default ``Success`` where runs log it, else ``return``), or with ``--protocol`` the task's success under each
evaluation protocol named (``python -m amago_like.evaluate RUN --protocol P --split test`` run after training:
amago_like/protocols.py). Aggregates, following Agarwal et al. (2021): per task, the mean over seeds and its 95%
bootstrap CI; across tasks, the interquartile mean (IQM) of every (seed, task) score with its 95% stratified
bootstrap CI, and the performance profile (the fraction of scores above each threshold). Scores of different
tasks are pooled as they are, so they must share a scale (success rates do). Written to
``{buffer_dir}/NAME_sweep/`` (with ``--protocol``, to its ``PROTOCOL_SPLIT/`` subfolders): ``table.md``,
``results.json``, ``per_task.png`` and ``performance_profile.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from amago_like.io import atomic_write_text
from amago_like.logging import read_metrics
from amago_like.plots import save_png
from amago_like.stats import bootstrap_ci, iqm, performance_profile, performance_profile_ci, stratified_bootstrap_ci

USAGE = "put the training command after --, e.g. python -m amago_like.sweep --seeds 0 1 2 -- examples/toy.py --epochs 5"


# ---------------------------------------------------------------------------------------------- the runs
def _flag(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """(the value of ``--name`` in ``args`` or None, ``args`` without it)."""
    rest, value, i = [], None, 0
    while i < len(args):
        if args[i] == f"--{name}" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif args[i].startswith(f"--{name}="):
            value, i = args[i].split("=", 1)[1], i + 1
        else:
            rest, i = rest + [args[i]], i + 1
    return value, rest


@dataclass
class Plan:
    """The runs of a sweep: their names, folders and commands."""

    command: list[str]  # the training command as given, without --run_name
    name: str
    buffer_dir: str
    seeds: list[int]

    @classmethod
    def of(cls, command: list[str], seeds: list[int], name: str | None = None) -> Plan:
        if not command:
            raise ValueError(USAGE)
        if any(a == "--seed" or a.startswith("--seed=") for a in command):
            raise ValueError("the sweep gives every run its --seed: drop --seed from the training command")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds lists a seed twice: {seeds}")
        run_name, command = _flag(command, "run_name")
        buffer_dir = _flag(command, "buffer_dir")[0] or "runs"
        scripts = [a for a in command if a.endswith(".py")]
        if scripts:
            stem = os.path.splitext(os.path.basename(scripts[0]))[0]
        else:  # -m package.module: the module's name
            stem = command[1].rsplit(".", 1)[-1] if command[0] == "-m" and len(command) > 1 else command[0]
        return cls(command, run_name or name or stem, buffer_dir, list(seeds))

    @property
    def folder(self) -> str:
        return os.path.join(self.buffer_dir, f"{self.name}_sweep")

    def results_folder(self, protocol: str | None = None, split: str = "val") -> str:
        """Where an aggregate goes: the sweep folder, or with a protocol its ``{protocol}_{split}`` subfolder (so
        the tables of several protocols stand side by side)."""
        return os.path.join(self.folder, f"{protocol}_{split}") if protocol else self.folder

    def run_dir(self, seed: int) -> str:
        return os.path.join(self.buffer_dir, f"{self.name}_s{seed}")

    def training(self, seed: int) -> list[str]:
        python = [sys.executable] if self.command[0].endswith(".py") or self.command[0] == "-m" else []
        return [*python, *self.command, "--seed", str(seed), "--run_name", f"{self.name}_s{seed}"]


@dataclass
class Job:
    """One seed's commands (training, then any evaluation), run one after another into its log file."""

    seed: int
    commands: list[list[str]]
    log: str
    env: dict[str, str]
    returncode: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def advance(self) -> bool:
        """Start the next command once the current one has ended; True when the job is over."""
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return False
            if code != 0 or not self.commands:
                self.returncode = code
                return True
        command = self.commands.pop(0)
        with open(self.log, "a") as f:
            f.write(f"$ {shlex.join(command)}\n")
            f.flush()
            self.process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=self.env)
        return False

    def tail(self, lines: int = 15) -> str:
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


def run_jobs(jobs: list[Job], parallel: int = 1, poll_s: float = 0.2) -> None:
    """Run ``jobs``, ``parallel`` at a time; Ctrl-C ends the running ones (and only those) before it stops."""
    waiting, running = list(jobs), []
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                job = waiting.pop(0)
                job.advance()
                running.append(job)
                print(f"seed {job.seed}: started (log {job.log})", flush=True)
            for job in [j for j in running if j.advance()]:
                running.remove(job)
                if job.returncode == 0:
                    print(f"seed {job.seed}: done", flush=True)
                else:
                    print(f"seed {job.seed}: failed with exit status {job.returncode}; its log ends:\n{job.tail()}")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in running:
            job.process.terminate()
        raise


# ---------------------------------------------------------------------------------------------- the scores
def scores_from_metrics(run_dir: str, metric: str | None = None, split: str = "val") -> tuple[dict[str, float], str]:
    """({task: score}, the metric) of a run's last ``split`` evaluation in its metrics.jsonl: ``split/<task>/<metric>``
    (a run of one unnamed task: ``split/<metric>`` as task "all"). ``metric`` None: Success if logged, else return."""
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = [
        r for r in (read_metrics(path) if os.path.exists(path) else []) if any(k.startswith(f"{split}/") for k in r)
    ]
    if not rows:
        raise ValueError(
            f"{path} holds no {split}/ evaluation: train with Experiment.val_interval set, or use --protocol"
        )
    last = rows[-1]
    if metric is None:
        metric = "Success" if f"{split}/Success" in last else "return"
    per_task = {
        k.split("/")[1]: float(v) for k, v in last.items() if re.fullmatch(rf"{split}/[^/]+/{re.escape(metric)}", k)
    }
    if not per_task and f"{split}/{metric}" in last:
        per_task = {"all": float(last[f"{split}/{metric}"])}
    if not per_task:
        raise ValueError(f"{path}'s last {split}/ evaluation has no {metric!r}; pick another --metric")
    return per_task, metric


def scores_from_protocol(run_dir: str, protocol: str, split: str = "test") -> dict[str, float]:
    """{task: success} from ``RUN/eval/{protocol}_{split}.csv`` (written by amago_like.evaluate --protocol)."""
    path = os.path.join(run_dir, "eval", f"{protocol}_{split}.csv")
    if not os.path.exists(path):
        raise ValueError(
            f"{path} not found: run python -m amago_like.evaluate {run_dir} --protocol {protocol} --split {split}"
        )
    with open(path) as f:
        return {row["task"]: float(row["success"]) for row in csv.DictReader(f) if row["task"] != "mean over tasks"}


@dataclass
class Aggregate:
    """Scores by task and seed, and their statistics."""

    scores: dict[str, dict[int, float]]  # task -> seed -> score
    metric: str
    seeds: list[int]

    def per_task(self) -> dict[str, dict]:
        out = {}
        for task, by_seed in self.scores.items():
            values = np.array([by_seed[s] for s in self.seeds if s in by_seed])
            lo, hi = bootstrap_ci(values)
            out[task] = {"seeds": len(values), "mean": float(values.mean()), "ci": [lo, hi]}
        return out

    @property
    def complete_tasks(self) -> list[str]:
        """Tasks that every seed scored: only those enter the IQM (its bootstrap needs every seed per task)."""
        return [t for t, by_seed in self.scores.items() if all(s in by_seed for s in self.seeds)]

    def matrix(self) -> np.ndarray:
        """(seeds, complete tasks) scores."""
        return np.array([[self.scores[t][s] for t in self.complete_tasks] for s in self.seeds])

    def iqm(self) -> tuple[float, tuple[float, float]]:
        m = self.matrix()
        return iqm(m), stratified_bootstrap_ci(m)

    def to_json(self) -> dict:
        value, ci = self.iqm() if self.complete_tasks else (None, None)
        return {"metric": self.metric, "seeds": self.seeds, "scores": self.scores, "per_task": self.per_task(),
                "iqm": value, "iqm_ci": ci, "iqm_tasks": self.complete_tasks}  # fmt: skip

    def table(self, source: str, command: str) -> str:
        lines = [f"# {self.metric} over seeds {', '.join(map(str, self.seeds))}", "",
                 f"Score: {source}.  ", f"Command: `{command}`", "",
                 f"| task | seeds | mean | 95% bootstrap CI | per seed ({', '.join(f's{s}' for s in self.seeds)}) |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for task, row in self.per_task().items():
            per_seed = ", ".join(f"{self.scores[task][s]:.3f}" if s in self.scores[task] else "-" for s in self.seeds)
            lines.append(f"| {task} | {row['seeds']} | {row['mean']:.3f} | {row['ci'][0]:.3f} to {row['ci'][1]:.3f} | {per_seed} |")  # fmt: skip
        lines.append("")
        if self.complete_tasks:
            value, (lo, hi) = self.iqm()
            lines.append(f"IQM over {len(self.complete_tasks)} tasks x {len(self.seeds)} seeds: {value:.3f} "
                         f"(95% stratified bootstrap CI {lo:.3f} to {hi:.3f})")  # fmt: skip
        missing = [t for t in self.scores if t not in self.complete_tasks]
        if missing:
            lines.append(f"Not in the IQM (a seed has no score for them): {', '.join(missing)}")
        lines += ["", "![per task](per_task.png) ![performance profile](performance_profile.png)"]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ figures
    def figures(self) -> dict[str, object]:
        from matplotlib.figure import Figure

        tasks, per_task = list(self.scores), self.per_task()
        fig = Figure(figsize=(max(4.0, 0.7 * len(tasks) + 2), 3.6))
        ax = fig.subplots()
        means = [per_task[t]["mean"] for t in tasks]
        errors = [[m - per_task[t]["ci"][0] for t, m in zip(tasks, means)],
                  [per_task[t]["ci"][1] - m for t, m in zip(tasks, means)]]  # fmt: skip
        ax.bar(range(len(tasks)), means, yerr=errors, capsize=3, color="C0", alpha=0.6, label="mean (95% CI)")
        for i, t in enumerate(tasks):
            ax.plot([i] * len(self.scores[t]), list(self.scores[t].values()), ".", color="C3", markersize=5)
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel("task (dots: one seed each)")
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.metric} per task over {len(self.seeds)} seeds", fontsize=9)
        fig.tight_layout()
        figures = {"per_task.png": fig}
        if self.complete_tasks:
            m = self.matrix()
            lo, hi = (0.0, 1.0) if m.min() >= 0 and m.max() <= 1 else (float(m.min()), float(m.max()) + 1e-9)
            taus = np.linspace(lo, hi, 51)
            profile, (low, high) = performance_profile(m, taus), performance_profile_ci(m, taus)
            fig = Figure(figsize=(5, 3.6))
            ax = fig.subplots()
            ax.plot(taus, profile, color="C1")
            ax.fill_between(taus, low, high, color="C1", alpha=0.25, label="95% stratified bootstrap CI")
            ax.set_xlabel(f"threshold τ on {self.metric}")
            ax.set_ylabel("fraction of (seed, task) scores > τ")
            ax.set_title(
                f"performance profile ({len(self.complete_tasks)} tasks x {len(self.seeds)} seeds)", fontsize=9
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            figures["performance_profile.png"] = fig
        return figures

    def write(self, folder: str, source: str, command: str) -> list[str]:
        os.makedirs(folder, exist_ok=True)
        paths = [os.path.join(folder, "table.md"), os.path.join(folder, "results.json")]
        atomic_write_text(paths[0], self.table(source, command))
        atomic_write_text(paths[1], json.dumps(self.to_json(), indent=1) + "\n")
        for name, fig in self.figures().items():
            paths.append(os.path.join(folder, name))
            save_png(fig, paths[-1], dpi=100)
        return paths


def aggregate(plan: Plan, seeds: list[int], metric=None, protocol=None, split=None) -> tuple[Aggregate, str]:
    """The scores of the runs of ``seeds`` (an error names a run without them), and what they are."""
    scores: dict[str, dict[int, float]] = {}
    for seed in seeds:
        if protocol:
            per_task = scores_from_protocol(plan.run_dir(seed), protocol, split or "test")
            metric = "success"
        else:
            per_task, metric = scores_from_metrics(plan.run_dir(seed), metric, split or "val")
        for task, value in per_task.items():
            scores.setdefault(task, {})[seed] = value
    if protocol:
        source = f"success under the {protocol} protocol on the {split or 'test'} split (RUN/eval/{protocol}_{split or 'test'}.csv)"
    else:
        source = f"{metric} of the last {split or 'val'}/ evaluation in each run's metrics.jsonl"
    return Aggregate(scores, metric, list(seeds)), source


# ---------------------------------------------------------------------------------------------- the command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m amago_like.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="the seeds to run")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at a time (default: one after another)")
    p.add_argument(
        "--name", default=None, help="NAME of the runs when the command has no --run_name (default: its script's)"
    )
    p.add_argument(
        "--metric", default=None, help="score from the last evaluation (default: Success if logged, else return)"
    )
    p.add_argument("--split", default=None, help="split of the scores (default: val, or test with --protocol)")
    # protocols.PROTOCOLS, spelled out: importing it would load torch into a process that only starts others
    p.add_argument("--protocol", nargs="+", choices=("k-attempt", "metaworld"), default=[],
                   help="score each run by these evaluation protocols after training (amago_like.evaluate "
                        "--protocol), each aggregated into NAME_sweep/PROTOCOL_SPLIT/")  # fmt: skip
    p.add_argument("--eval_args", default="", help='more arguments for amago_like.evaluate under every protocol, '
                                                   'e.g. "--actions mode"')  # fmt: skip
    p.add_argument("--protocol_args", nargs=2, action="append", default=[], metavar=("PROTOCOL", "ARGS"),
                   help="more arguments for amago_like.evaluate under PROTOCOL only (repeatable), e.g. "
                        '--protocol_args metaworld "--adaptation_episodes 2"')  # fmt: skip
    p.add_argument("--aggregate_only", action="store_true", help="no runs: aggregate the run folders already there")
    return p


def main(argv: list[str] | None = None) -> list[Aggregate]:
    """The sweep; returns its aggregates, one per protocol (one of the metrics' without ``--protocol``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if "--" not in argv:
        p.error(USAGE)
    cut = argv.index("--")
    args = p.parse_args(argv[:cut])
    if args.parallel < 1:
        p.error(f"--parallel must be 1 or more, got {args.parallel}")
    try:
        plan = Plan.of(argv[cut + 1 :], args.seeds, args.name)
    except ValueError as e:
        p.error(str(e))
    split = args.split or ("test" if args.protocol else "val")
    protocol_args = {protocol: [] for protocol in args.protocol}
    for protocol, more in args.protocol_args:
        if protocol not in protocol_args:
            p.error(f"--protocol_args {protocol}: that protocol is not among --protocol {' '.join(args.protocol)}")
        protocol_args[protocol] += shlex.split(more)
    ok = list(plan.seeds)
    if not args.aggregate_only:
        logs = os.path.join(plan.folder, "logs")
        os.makedirs(logs, exist_ok=True)
        env = dict(os.environ)
        if args.parallel > 1 and "OMP_NUM_THREADS" not in env:  # N runs share the cores instead of fighting for them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.parallel))
        jobs = []
        for seed in plan.seeds:
            commands = [plan.training(seed)]
            for protocol in args.protocol:
                commands.append([sys.executable, "-m", "amago_like.evaluate", plan.run_dir(seed), "--protocol",
                                 protocol, "--split", split, *shlex.split(args.eval_args),
                                 *protocol_args[protocol]])  # fmt: skip
            jobs.append(Job(seed, commands, os.path.join(logs, f"seed_{seed}.log"), env))
        run_jobs(jobs, args.parallel)
        ok = [j.seed for j in jobs if j.returncode == 0]
        if not ok:
            sys.exit(f"error: every run failed; their logs are in {logs}")
    results, command = [], shlex.join(argv[cut + 1 :])
    for protocol in args.protocol or [None]:
        try:
            result, source = aggregate(plan, ok, args.metric, protocol, split)
        except ValueError as e:
            sys.exit(f"error: {e}")
        paths = result.write(plan.results_folder(protocol, split), source, command)
        print(result.table(source, command))
        print(f"written: {', '.join(paths)}")
        results.append(result)
    if len(ok) < len(plan.seeds):
        sys.exit(f"error: seeds {sorted(set(plan.seeds) - set(ok))} failed (aggregated without them)")
    return results


if __name__ == "__main__":
    main()
