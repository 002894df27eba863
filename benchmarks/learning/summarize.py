"""Summarise a learning run: curves to PNG and one line of final held-out (val/) results.

python benchmarks/learning/summarize.py runs/learning/ml1_reach
"""

from __future__ import annotations

import re
import sys

from amago_like.logging import plot_metrics, read_metrics


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
    plot_metrics(run_dir, x_key="total_frames")
    return " | ".join(parts)


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(summarize(run))
