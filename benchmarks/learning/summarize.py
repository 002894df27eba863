"""Summarise a learning run: curves to PNG and one line of final held-out (val/) results.

python benchmarks/learning/summarize.py runs/learning/ml1_reach
"""

from __future__ import annotations

import re
import sys

from amago_like.logging import read_metrics
from amago_like.plots import plot_metrics


def summarize(run_dir: str) -> str:
    rows = read_metrics(f"{run_dir}/metrics.jsonl")
    evals = [r for r in rows if "val/return" in r]
    if not evals:
        return f"{run_dir}: no evaluation logged yet"
    last, first = evals[-1], evals[0]
    per_attempt = sorted(
        (k for k in last if re.fullmatch(r"val/(Trial|Episode) \d+ (Success|Return)", k)),
        key=lambda k: int(k.split()[1]),
    )
    parts = [
        f"{run_dir}: epoch {last['epoch']}, {last['total_frames']:.0f} env steps, {last['grad_updates']:.0f} updates",
        f"held-out return {first['val/return']:.2f} -> {last['val/return']:.2f}",
    ]
    if "val/Success" in last:
        parts.append(f"success {first['val/Success']:.2f} -> {last['val/Success']:.2f}")
    if per_attempt:
        parts.append(
            "per attempt: " + ", ".join(f"{k.split('/')[1].rsplit(' ', 1)[0]} {last[k]:.2f}" for k in per_attempt)
        )
    closest = sorted(
        (k for k in last if re.fullmatch(r"val/Trial \d+ Min Distance", k)), key=lambda k: int(k.split()[1])
    )
    if closest:
        parts.append("min distance to target (m): " + ", ".join(f"{last[k]:.3f}" for k in closest))
    plot_metrics(run_dir, x_key="total_frames")
    if per_attempt:
        plot_adaptation(run_dir, evals, per_attempt)
    return " | ".join(parts)


def plot_adaptation(run_dir: str, evals: list[dict], keys: list[str]) -> str:
    """Held-out result per attempt (the in-context adaptation curve), untrained vs final policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    attempts = [int(k.split()[1]) for k in keys]
    for row, label in ((evals[0], "before training"), (evals[-1], f"after {row_frames(evals[-1])} env steps")):
        ax.plot(attempts, [row.get(k, float("nan")) for k in keys], marker="o", label=label)
    ax.set_xlabel("attempt within the meta-episode")
    ax.set_ylabel(keys[0].split("/")[1].split(" ", 2)[-1])
    ax.set_xticks(attempts)
    ax.set_title("held-out adaptation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = f"{run_dir}/plots/adaptation.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def row_frames(row: dict) -> str:
    return f"{row['total_frames'] / 1000:.0f}k"


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(summarize(run))
