"""Plot one metric of several runs against env steps, in one figure.

python benchmarks/learning/compare.py runs/learning/ml1_reach runs/learning/ml1_reach_ctx450 \
    --metric val/Success --out docs/results/ml1_reach_context.png
"""

from __future__ import annotations

import argparse
import os

from amago_like.logging import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (each with a metrics.jsonl)")
    parser.add_argument("--metric", default="val/Success")
    parser.add_argument("--labels", nargs="*", default=None, help="one legend label per run (default: folder name)")
    parser.add_argument("--smooth", type=int, default=1, help="moving average over this many logged points")
    parser.add_argument("--max_steps", type=int, default=None, help="plot only points up to this many env steps")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    labels = args.labels or [os.path.basename(os.path.normpath(r)) for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run, label in zip(args.runs, labels):
        rows = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if args.metric in r]
        rows = [r for r in rows if args.max_steps is None or r["total_frames"] <= args.max_steps]
        if not rows:
            parser.error(f"{run} never logged {args.metric}")
        raw = [r[args.metric] for r in rows]
        windows = [raw[max(0, i - args.smooth + 1) : i + 1] for i in range(len(raw))]
        values = [sum(w) / len(w) for w in windows]
        ax.plot([r["total_frames"] for r in rows], values, marker="." if args.smooth == 1 else None, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel(args.metric + (f" (mean of the last {args.smooth})" if args.smooth > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
