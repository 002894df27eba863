"""Plots of a run's metrics.jsonl: one PNG per metric group in ``{run_dir}/plots/``, a line per task (a heatmap
past :data:`MAX_LINES` tasks); a group whose points have not changed is not drawn again."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from amago_like.io import atomic_write, atomic_write_text
from amago_like.logging import read_metrics

PLOT_PREFIXES = ("train/", "val/", "learn/")

# What the x value of a point counts, by metric family (the first part of its name)
X_LABELS = {
    "learn": "gradient updates (optimizer steps)",
    "train": "environment steps collected (all actors)",
    "val": "epochs of training before the evaluation",
}
MAX_LINES = 10  # more tasks than this: a heatmap (tab10 has 10 colours that can be told apart)


@dataclass
class Series:
    """One line of a plot: ``label`` (a task name, or "all"), its kind of row, and the points."""

    label: str
    kind: str  # "epoch": one value per epoch (means over the epoch); "batch": one batch every log_interval updates
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)


def metric_series(rows: list[dict[str, float]], x_key: str | None = None) -> dict[str, list[Series]]:
    """The plot groups of a run's metrics rows: ``{"learn/critic_loss": [Series, ...], "val/Success": [...]}``.

    A group is a metric (``prefix/name``); its series are the tasks ("val/reach-v3/Success" is the line
    "reach-v3" of "val/Success"; "val/Success" itself is "all"). Rows are told apart by what they hold:
    an epoch row (it has ``epoch_seconds``: epoch means, written once the epoch ends), a row of one batch
    (``learn/`` metrics logged every ``log_interval`` updates inside an epoch), and the final evaluation
    (``val/`` only). The two kinds of ``learn/`` rows are separate series: joined, they drew a saw-tooth
    loss and a learning rate that dipped at every epoch's end.

    x (None: each family's own): learn/ by gradient updates, train/ by environment steps collected, val/
    by the epochs trained before the evaluation. An epoch row's val/ metrics were measured at that
    epoch's start (epoch - 1 epochs of training); the final evaluation after the last epoch (epoch).
    Any other ``x_key`` (a column such as "total_frames") is used for every family."""
    out: dict[str, dict[tuple[str, str], Series]] = defaultdict(dict)
    for row in rows:
        epoch_row = "epoch_seconds" in row
        for key, value in row.items():
            if key == "step" or not key.startswith(PLOT_PREFIXES) or not isinstance(value, (int, float)):
                continue
            family = key.split("/")[0]
            if family == "learn" and not epoch_row:
                kind = "batch"
            else:
                kind = "epoch"
            x = _x_of(row, family, epoch_row, x_key)
            if x is None:
                continue
            parts = key.split("/")
            group, label = f"{parts[0]}/{parts[-1]}", "/".join(parts[1:-1]) or "all"
            series = out[group].setdefault((label, kind), Series(label, kind))
            series.xs.append(x)
            series.ys.append(float(value))
    groups = {}
    for group, by_label in sorted(out.items()):
        series = sorted(by_label.values(), key=lambda s: (s.label != "all", s.label, s.kind))
        tasks = {s.label for s in series} - {"all"}
        if len(tasks) == 1:  # one task: its line is the mean's line, drawn twice
            (task,) = tasks
            mean = {(s.kind, tuple(s.xs), tuple(s.ys)) for s in series if s.label == "all"}
            if mean == {(s.kind, tuple(s.xs), tuple(s.ys)) for s in series if s.label == task}:
                series = [s for s in series if s.label == task]
        groups[group] = series
    return groups


def _x_of(row: dict[str, float], family: str, epoch_row: bool, x_key: str | None) -> float | None:
    if x_key is not None:
        return row.get(x_key, row.get("step"))
    if family == "learn":
        return row.get("grad_updates", row.get("step"))
    if family == "train":
        return row.get("total_frames")
    if "epoch" not in row:
        return None
    return row["epoch"] - 1 if epoch_row else row["epoch"]


def plot_metrics(run_dir: str, x_key: str | None = None, filename: str = "metrics.jsonl") -> list[str]:
    """Write one PNG per metric group under ``{run_dir}/plots`` from ``{run_dir}/{filename}``; returns
    the paths. Meant to be called at every checkpoint: a group whose points have not changed since the
    last call is not drawn again (``plots/.plotted.json`` remembers them), matplotlib is used without
    pyplot (no global state, no backend switch), and each PNG is written under a temporary name and
    renamed, so a viewer or a copy never sees half a file. Groups with more than MAX_LINES tasks (ML45)
    are drawn as a heatmap, one row per task, below the line of the mean over tasks.
    :func:`plot_metrics_in_background` does the same without holding up the caller."""
    running = _plotting.get(run_dir)
    if running is not None and running is not threading.current_thread():
        running.join()  # one writer per plots folder: a final call waits for a checkpoint's background one
    path = os.path.join(run_dir, filename)
    if not os.path.exists(path):
        return []
    groups = metric_series(read_metrics(path), x_key)
    if not groups:
        return []
    from matplotlib.figure import Figure

    out_dir = os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    state_path = os.path.join(out_dir, ".plotted.json")
    try:
        with open(state_path) as f:
            plotted = json.load(f)
    except (OSError, ValueError):
        plotted = {}
    written, redrawn = [], False
    for group, series in groups.items():
        family = group.split("/")[0]
        xlabel = X_LABELS.get(family, "step") if x_key is None else x_key
        out = os.path.join(out_dir, group.replace("/", "_").replace(" ", "_") + ".png")
        digest = hashlib.sha1(repr((xlabel, [(s.label, s.kind, s.xs, s.ys) for s in series])).encode()).hexdigest()
        written.append(out)
        if plotted.get(os.path.basename(out)) == digest and os.path.exists(out):
            continue
        tasks = [s for s in series if s.label != "all"]
        if len({s.label for s in tasks}) > MAX_LINES:
            fig = _heatmap_figure(Figure, group, series, xlabel)
        else:
            fig = Figure(figsize=(7, 4))
            ax = fig.subplots()
            _draw_lines(ax, series)
            ax.set_xlabel(xlabel)
            ax.set_title(group)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)  # tight_layout costs a second draw
        save_png(fig, out)
        plotted[os.path.basename(out)] = digest
        redrawn = True
    if redrawn:
        atomic_write_text(state_path, json.dumps(plotted))
    return written


def save_png(fig: Any, path: str, dpi: int = 80) -> None:
    """A matplotlib figure to ``path`` as a PNG, written atomically (a viewer never sees half a file)."""
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))


_plotting: dict[str, threading.Thread] = {}  # run folder -> its plotting thread


def plot_metrics_in_background(run_dir: str, **kwargs: Any) -> threading.Thread | None:
    """:func:`plot_metrics` in a daemon thread, so a checkpoint does not wait for matplotlib; None
    (nothing started) while the previous plotting of ``run_dir`` still runs. An error is a warning:
    plots must never stop a run. A process that exits mid-plot leaves at most a hidden ``.tmp`` file."""
    running = _plotting.get(run_dir)
    if running is not None and running.is_alive():
        return None

    def plot() -> None:
        try:
            plot_metrics(run_dir, **kwargs)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"could not plot the metrics of {run_dir}: {type(e).__name__}: {e}", stacklevel=1)

    thread = threading.Thread(target=plot, name=f"plot_metrics {run_dir}", daemon=True)
    _plotting[run_dir] = thread
    thread.start()
    return thread


def _draw_lines(ax: Any, series: list[Series]) -> None:
    """One colour per task (black for the mean over tasks); epoch means solid, single batches faint."""
    colours: dict[str, Any] = {}
    palette = iter(f"C{i}" for i in range(MAX_LINES))
    for s in series:
        colour = colours.setdefault(s.label, "black" if s.label == "all" else next(palette, "grey"))
        few = len(s.xs) < 30
        if s.kind == "batch":
            label = (
                f"{s.label}: one batch, every log_interval updates"
                if s.label != "all"
                else "one batch, every log_interval updates"
            )
            ax.plot(s.xs, s.ys, color=colour, alpha=0.35, linewidth=0.8, marker="." if few else None, label=label)
        else:
            label = s.label if s.label != "all" or len(series) == 1 else "mean over tasks"
            if any(o.kind == "batch" for o in series):
                label = f"{label if s.label != 'all' else ''} mean over each epoch".strip()
            ax.plot(
                s.xs,
                s.ys,
                color=colour,
                linewidth=1.8 if s.label == "all" else 1.2,
                marker="o" if few else None,
                markersize=3,
                label=label,
            )


def _heatmap_figure(figure_type: Any, group: str, series: list[Series], xlabel: str) -> Any:
    """The mean over tasks as a line, above a heatmap with one row per task (columns: the x values)."""
    import numpy as np

    tasks = sorted({s.label for s in series if s.label != "all"})
    by_task = {s.label: dict(zip(s.xs, s.ys)) for s in series if s.label != "all" and s.kind == "epoch"}
    xs = sorted({x for points in by_task.values() for x in points})
    grid = np.full((len(tasks), len(xs)), np.nan)
    column = {x: j for j, x in enumerate(xs)}
    for i, task in enumerate(tasks):
        for x, y in by_task.get(task, {}).items():
            grid[i, column[x]] = y
    fig = figure_type(figsize=(9, 2.2 + 0.16 * len(tasks)))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, max(2.0, 0.12 * len(tasks))]})
    mean = [s for s in series if s.label == "all" and s.kind == "epoch"]
    if mean:
        top.plot(mean[0].xs, mean[0].ys, color="black", marker="o" if len(mean[0].xs) < 30 else None, markersize=3)
    else:  # no logged mean: the mean of the tasks' values
        top.plot(xs, np.nanmean(grid, axis=0), color="black")
    top.set_title(f"{group}: mean over {len(tasks)} tasks (top), each task (below)")
    top.grid(alpha=0.3)
    # cells centred on their x values, so the columns line up with the points of the line above
    centres = np.asarray(xs, dtype=float)
    if len(centres) > 1:
        middles = (centres[1:] + centres[:-1]) / 2
        edges = np.concatenate([[2 * centres[0] - middles[0]], middles, [2 * centres[-1] - middles[-1]]])
    else:
        edges = np.concatenate([centres - 0.5, centres + 0.5])
    bounded = np.nanmin(grid) >= 0 and np.nanmax(grid) <= 1 if np.isfinite(grid).any() else False
    image = bottom.pcolormesh(
        edges, np.arange(len(tasks) + 1), grid, cmap="viridis", vmin=0 if bounded else None, vmax=1 if bounded else None
    )
    bottom.set_yticks(np.arange(len(tasks)) + 0.5, tasks, fontsize=6)
    bottom.invert_yaxis()
    bottom.set_xlabel(xlabel)
    fig.colorbar(image, ax=bottom, fraction=0.03, pad=0.01, label=group.split("/")[-1])
    # fixed margins (tight_layout would draw the figure twice): room on the left for the task names
    height = fig.get_figheight()
    left = min(0.4, (0.35 + 0.055 * max(len(t) for t in tasks)) / fig.get_figwidth())
    fig.subplots_adjust(left=left, right=0.9, bottom=0.6 / height, top=1 - 0.35 / height, hspace=0.08)
    return fig
