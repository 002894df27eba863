"""Env steps/s and updates/s of a run, epoch by epoch, from its ``metrics.jsonl``.

Each row of the learner's log carries ``total_frames`` (env steps of every actor; in an overlapped run the
collector's, as it reported them), ``grad_updates`` and ``wall_seconds``; the rates are their differences between
consecutive rows. The last line is the steady state: the rates from the end of epoch ``--skip`` (default 1: start-up,
compilation and the first meta-episodes excluded) to the last row, both measured over the same seconds.

    python benchmarks/run_rates.py runs/learning/ml10_gpu_overlap [--skip 2]
"""

from __future__ import annotations

import argparse
import os

from amago_like.logging import read_metrics


def read_rows(run_dir: str) -> list[dict]:
    """The rows of ``metrics.jsonl`` that carry the three counters, one per epoch (the last row of each)."""
    rows: dict[int, dict] = {}
    for row in read_metrics(os.path.join(run_dir, "metrics.jsonl")):  # (skips a line a kill cut short)
        if all(k in row for k in ("epoch", "total_frames", "grad_updates", "wall_seconds")):
            rows[int(row["epoch"])] = row
    return [rows[e] for e in sorted(rows)]


def rate_lines(rows: list[dict], skip: int) -> list[str]:
    lines = ["| epoch | wall s | env steps | updates | env steps/s | updates/s |", "|---|---|---|---|---|---|"]
    last = {"wall_seconds": 0.0, "total_frames": 0, "grad_updates": 0}
    for row in rows:
        seconds = row["wall_seconds"] - last["wall_seconds"]
        frames, updates = row["total_frames"] - last["total_frames"], row["grad_updates"] - last["grad_updates"]
        lines.append(
            f"| {int(row['epoch'])} | {row['wall_seconds']:.1f} | {int(row['total_frames'])} | "
            f"{int(row['grad_updates'])} | {frames / max(seconds, 1e-9):.0f} | {updates / max(seconds, 1e-9):.1f} |"
        )
        last = row
    start = [r for r in rows if r["epoch"] <= skip]
    if not start or start[-1] is rows[-1]:
        lines.append(f"steady state: not measured (no row after epoch {skip}; lower --skip)")
        return lines
    a, b = start[-1], rows[-1]
    seconds = b["wall_seconds"] - a["wall_seconds"]
    lines.append(
        f"steady state (epochs {int(a['epoch']) + 1}-{int(b['epoch'])}, {seconds:.1f} s): "
        f"{(b['total_frames'] - a['total_frames']) / seconds:.0f} env steps/s, "
        f"{(b['grad_updates'] - a['grad_updates']) / seconds:.1f} updates/s"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder (holds metrics.jsonl)")
    parser.add_argument("--skip", type=int, default=1, help="epochs left out of the steady state (default 1)")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.run_dir, "metrics.jsonl")):
        parser.error(f"{args.run_dir} holds no metrics.jsonl: give a run folder (e.g. runs/learning/<run_name>)")
    print("\n".join(rate_lines(read_rows(args.run_dir), args.skip)))


if __name__ == "__main__":
    main()
