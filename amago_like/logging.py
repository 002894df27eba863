"""Run logging: always a local metrics.jsonl (+ PNG plots), optionally wandb."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

PLOT_PREFIXES = ("train/", "val/", "learn/")


class RunLogger:
    """Appends one JSON line per ``log`` call to ``{run_dir}/{filename}`` and mirrors it to wandb."""

    def __init__(self, run_dir: str, wandb_run=None, filename: str = "metrics.jsonl"):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, filename)
        self.wandb_run = wandb_run

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def read_metrics(path: str) -> list[dict[str, float]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
    return rows


def plot_metrics(run_dir: str, x_key: str = "step") -> list[str]:
    """Write one PNG per metric group (split on the first '/') under ``{run_dir}/plots``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in read_metrics(path):
        x = row.get(x_key, row.get("step"))
        for k, v in row.items():
            if k != "step" and k.startswith(PLOT_PREFIXES):
                series[k].append((x, v))
    # "val/reach-v3/Success" -> plot "val/Success", line "reach-v3"; "val/return" -> plot "val/return", line "all"
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for k in sorted(series):
        parts = k.split("/")
        groups[f"{parts[0]}/{parts[-1]}"].append((k, "/".join(parts[1:-1]) or "all"))
    out_dir = os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for group, keys in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, label in keys:
            xs, ys = zip(*series[k])
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
        ax.set_xlabel(x_key)
        ax.set_title(group)
        ax.legend(fontsize=6, ncol=1 + len(keys) // 16)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = os.path.join(out_dir, group.replace("/", "_").replace(" ", "_") + ".png")
        fig.savefig(out, dpi=80)
        plt.close(fig)
        written.append(out)
    return written
