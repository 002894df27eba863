"""Evaluation protocols: what a reported success rate counts.

Both protocols play every task x goal of a split exactly once: one actor per goal (``max_actors`` at a time),
and only each actor's first meta-episode counts. No goal is drawn at random, none twice, and a goal whose
meta-episodes are short cannot stand in for a slow one (as it could when the first N finished episodes are
kept).

``k-attempt``
    The run's own meta-episode: k attempts of the same goal, the policy's memory kept across them. Reports
    each attempt's success (an attempt succeeds if any of its steps does) and success in any attempt, per
    task (the mean over its goals) and overall (the mean over tasks).
``metaworld``
    Meta-World's meta-RL protocol (Meta-World v3 docs, "Evaluation"; ``metaworld.evaluation``): on each held-out
    task x goal, ``adaptation_episodes`` episodes to adapt from, then ``evaluation_episodes`` scored ones; an
    evaluation episode succeeds if any of its steps does; a goal scores the share of its evaluation episodes
    that succeeded, a task the mean over its goals, the benchmark the mean over tasks. A sequence model adapts in
    context, so here the episodes are the attempts of one meta-episode of ``adaptation + evaluation`` attempts.
    The counting is per (task, goal): Meta-World's own loop tallies finished episodes by task name until every
    task has its quota, and with terminate-on-success the tasks that succeed quickly fill theirs first, which
    over-counts success. Two differences remain: Meta-World ends an evaluation episode at its first success
    while every attempt here runs its full length, as in training (the success counted is the same; the
    later attempts see whole earlier ones), and ``sample`` (``--actions``) applies to every attempt, where
    Meta-World's agent may act differently when adapting and when evaluated.

The env contract: its factory takes ``task_index`` (and ``k_episodes`` for ``metaworld``), the env has
``num_tasks``, and each finished meta-episode reports its task as the episode's env name and ``log/Trial {i}
Success`` for each attempt i, as :class:`~amago_like.envs.builtin.metaworld.KEpisodeMetaworld` does.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from amago_like.envs.vector import make_vector_env
from amago_like.envs.wrapper import EpisodeStats
from amago_like.io import atomic_write_text
from amago_like.plots import save_png
from amago_like.rollout import KeptEpisodes, Rollout, summarize_episodes

PROTOCOLS = ("k-attempt", "metaworld")
#: Meta-World's defaults (``metalearning_evaluation``: one adaptation step of 10 episodes, then 3 scored)
ADAPTATION_EPISODES, EVALUATION_EPISODES = 10, 3


@dataclass(frozen=True)
class Protocol:
    """A protocol and its episode counts (``metaworld`` only: attempts to adapt from, attempts scored)."""

    name: str
    adaptation_episodes: int = 0
    evaluation_episodes: int = 0

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.name!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.name == "metaworld" and (self.adaptation_episodes < 0 or self.evaluation_episodes < 1):
            raise ValueError(
                f"the metaworld protocol got {self.adaptation_episodes} adaptation and {self.evaluation_episodes} "
                "evaluation episodes: pass --adaptation_episodes 0 or more and --evaluation_episodes 1 or more"
            )

    @classmethod
    def named(cls, name: str, adaptation_episodes: int | None = None, evaluation_episodes: int | None = None):
        """``name`` with Meta-World's episode counts where none are given (they apply to ``metaworld`` only)."""
        if name != "metaworld":
            if adaptation_episodes is not None or evaluation_episodes is not None:
                raise ValueError(f"adaptation and evaluation episodes are the metaworld protocol's, not {name!r}'s")
            return cls(name)
        a = ADAPTATION_EPISODES if adaptation_episodes is None else adaptation_episodes
        return cls(name, a, EVALUATION_EPISODES if evaluation_episodes is None else evaluation_episodes)

    def env_kwargs(self) -> dict[str, int]:
        """What the env factory is given besides ``task_index``: the metaworld protocol sets the attempts."""
        return {"k_episodes": self.adaptation_episodes + self.evaluation_episodes} if self.name == "metaworld" else {}

    @property
    def counted_from(self) -> int:
        """Index (0-based) of the first scored attempt."""
        return self.adaptation_episodes

    def goal_success(self, attempts: list[float]) -> float:
        """k-attempt: success in any attempt. metaworld: the share of the evaluation attempts that succeeded."""
        if self.name == "k-attempt":
            return float(max(attempts))
        return float(np.mean(attempts[self.counted_from :]))

    def describe(self) -> str:
        if self.name == "k-attempt":
            return "success in any attempt"
        return (
            f"success in the {self.evaluation_episodes} evaluation episodes after {self.adaptation_episodes} "
            "adaptation episodes"
        )


@dataclass
class GoalResult:
    """One task x goal's meta-episode: the goal is its 0-based index among its task's goals (split order)."""

    task: str
    goal: int
    task_index: int
    attempts: list[float]  # each attempt's success, 0 or 1
    ret: float


@dataclass
class ProtocolResult:
    protocol: Protocol
    split: str
    goals: list[GoalResult]
    episodes: list[EpisodeStats] = field(default_factory=list)  # the counted meta-episodes, in task_index order

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(g.task for g in self.goals))

    @property
    def num_attempts(self) -> int:
        return len(self.goals[0].attempts)

    def _by_task(self) -> dict[str, list[GoalResult]]:
        return {t: [g for g in self.goals if g.task == t] for t in self.tasks}

    def attempt_matrix(self) -> np.ndarray:
        """(tasks, attempts): the share of each task's goals whose attempt i succeeded."""
        return np.array([np.mean([g.attempts for g in goals], axis=0) for goals in self._by_task().values()])

    def task_success(self) -> dict[str, float]:
        """The protocol's success per task: the mean over the task's goals."""
        score = self.protocol.goal_success
        return {task: float(np.mean([score(g.attempts) for g in goals])) for task, goals in self._by_task().items()}

    def success(self) -> float:
        """The protocol's success over the split: the mean over tasks, each task weighted the same."""
        return float(np.mean(list(self.task_success().values())))

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """``{prefix}/Success``, ``{prefix}/Trial i Success`` (means over tasks) and the same per task."""
        matrix, per_task = self.attempt_matrix(), self.task_success()
        out = {f"{prefix}/Success": self.success(), f"{prefix}/goals": len(self.goals)}
        out.update({f"{prefix}/Trial {i + 1} Success": float(v) for i, v in enumerate(matrix.mean(axis=0))})
        for task, row in zip(self.tasks, matrix):
            out[f"{prefix}/{task}/Success"] = per_task[task]
            out.update({f"{prefix}/{task}/Trial {i + 1} Success": float(v) for i, v in enumerate(row)})
        return out

    def summary(self, prefix: str = "test") -> dict[str, float]:
        """The counted meta-episodes' means (return, length, logged metrics) with the protocol's :meth:`metrics`
        over them, which replace the episodes' own success figures."""
        return {**summarize_episodes(self.episodes, prefix), **self.metrics(prefix)}

    # ------------------------------------------------------------------ files
    def tables(self) -> tuple[str, str]:
        """(per task x attempt CSV with the protocol's success per task, per task x goal CSV)."""
        attempts = [f"attempt {i + 1}" for i in range(self.num_attempts)]
        per_task, goals = io.StringIO(), io.StringIO()
        writer = csv.writer(per_task, lineterminator="\n")
        writer.writerow(["task", "goals", *attempts, "success"])
        success = self.task_success()
        for (task, gs), row in zip(self._by_task().items(), self.attempt_matrix()):
            writer.writerow([task, len(gs), *(f"{v:.4f}" for v in row), f"{success[task]:.4f}"])
        mean = self.attempt_matrix().mean(axis=0)
        writer.writerow(["mean over tasks", len(self.goals), *(f"{v:.4f}" for v in mean), f"{self.success():.4f}"])
        writer = csv.writer(goals, lineterminator="\n")
        writer.writerow(["task", "goal", "task_index", *attempts, "success", "return"])
        for g in self.goals:
            success_g = self.protocol.goal_success(g.attempts)
            writer.writerow([g.task, g.goal, g.task_index, *(int(a) for a in g.attempts), success_g, f"{g.ret:.4f}"])
        return per_task.getvalue(), goals.getvalue()

    def write(self, folder: str, name: str) -> list[str]:
        """``{name}.csv`` (task x attempt), ``{name}_goals.csv`` (task x goal) and ``{name}.png`` (the heatmap of
        the first) in ``folder``; returns their paths."""
        os.makedirs(folder, exist_ok=True)
        paths = [os.path.join(folder, f"{name}{end}") for end in (".csv", "_goals.csv", ".png")]
        for path, text in zip(paths, self.tables()):
            atomic_write_text(path, text)
        save_png(self.figure(), paths[2])
        return paths

    def figure(self) -> Any:
        """The task x attempt success matrix as a heatmap, the mean over tasks as its last row."""
        from matplotlib.figure import Figure

        grid = np.vstack([self.attempt_matrix(), self.attempt_matrix().mean(axis=0)])
        rows, k = [*self.tasks, "mean over tasks"], self.num_attempts
        fig = Figure(figsize=(2.5 + 0.1 * max(len(r) for r in rows) + 0.5 * k, 1.6 + 0.3 * len(rows)))
        ax = fig.subplots()
        image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(k), [str(i + 1) for i in range(k)])
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        if grid.size <= 600:  # beyond that the figures would not be readable
            for (r, c), v in np.ndenumerate(grid):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.5 else "black")
        xlabel = "attempt"
        if self.protocol.counted_from:
            ax.axvline(self.protocol.counted_from - 0.5, color="red", linewidth=2)
            xlabel += " (right of the red line: the evaluation episodes, scored)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("task")
        ax.set_title(
            f"{self.protocol.name} protocol, {self.split} split: success per task and attempt "
            f"({len(self.goals)} goals, each once)",
            fontsize=8,
        )
        fig.colorbar(image, ax=ax, label="share of the task's goals")
        fig.tight_layout()
        return fig


def run_protocol(
    protocol: Protocol,
    policy_for: Callable[[Rollout], Any],
    make_env: Callable[..., gym.Env],
    num_tasks: int,
    device: torch.device,
    split: str = "test",
    sample: bool = True,
    seed: int | None = None,
    max_actors: int | None = None,
    save_trajs_to: str | None = None,
    render_to: str | None = None,
) -> ProtocolResult:
    """Play every task ``0..num_tasks-1`` of ``make_env`` (called with ``task_index`` and the protocol's
    :meth:`Protocol.env_kwargs`) once, ``max_actors`` at a time (default: all at once). ``policy_for(rollout)``
    gives the policy (built on the first rollout's spaces). Goal i's envs reset with ``seed + i``. With
    ``save_trajs_to``, the counted meta-episodes (each actor's first) are written there, no others."""
    if num_tasks < 1:
        raise ValueError("the split has no tasks to evaluate")
    size = max_actors or num_tasks
    if size < 1:
        raise ValueError(f"max_actors must be >= 1, got {max_actors}")
    policy, episodes = None, []
    with KeptEpisodes(save_trajs_to) as saved:  # only the counted meta-episodes stay in save_trajs_to
        for start in range(0, num_tasks, size):
            indices = range(start, min(start + size, num_tasks))
            factories = [functools.partial(make_env, task_index=i, **protocol.env_kwargs()) for i in indices]
            record = render_to if start == 0 else None
            envs = make_vector_env(factories, len(factories), "sync", saved.folder, record_to=record)
            rollout = Rollout(envs, device)
            try:
                policy = policy_for(rollout) if policy is None else policy
                desc = f"{protocol.name} goals {start + 1}-{indices[-1] + 1} of {num_tasks}"
                episodes += rollout.first_episodes(policy, sample, None if seed is None else seed + start, desc)
            finally:
                rollout.close()
        saved.keep(episodes)
    goals, seen = [], {}
    for i, episode in enumerate(episodes):
        goal = seen[episode.env_name] = seen.get(episode.env_name, -1) + 1
        goals.append(GoalResult(episode.env_name, goal, i, attempt_successes(episode), episode.ret))
    if len({len(g.attempts) for g in goals}) > 1:
        raise ValueError("the meta-episodes reported different numbers of attempts; every goal needs the same k")
    return ProtocolResult(protocol, split, goals, episodes)


def attempt_successes(episode: EpisodeStats) -> list[float]:
    """Each attempt's success (``log/Trial i Success``, i = 1, 2, ...) of a finished meta-episode."""
    attempts = []
    while (value := episode.metrics.get(f"log/Trial {len(attempts) + 1} Success")) is not None:
        attempts.append(float(value))
    if not attempts:
        raise ValueError(
            f"a meta-episode of {episode.env_name!r} reports no 'log/Trial 1 Success': the protocols need envs that "
            "report each attempt's success in their info (as KEpisodeMetaworld does)"
        )
    return attempts
