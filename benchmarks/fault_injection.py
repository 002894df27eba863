"""Kill a training run with SIGKILL at random moments, resume it each time, and check nothing was lost.

    python benchmarks/fault_injection.py --kills 10

Runs `examples/toy.py` (meta-bandit) in a temporary folder with a checkpoint every epoch. After each kill
it records every visible trajectory file and the newest complete checkpoint, then resumes with --resume.
At the end it checks: every trajectory file seen after any kill still exists and loads (the FIFO bound is
set far above what the run writes, so nothing may be deleted), every checkpoint loads, and the counters
in metrics.jsonl never move backwards across a resume. Prints kills survived and files lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch

from amago_like.data import TrajectoryFileError, load_trajectory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "faults"


def visible_files(folder: str) -> set[str]:
    return {f for f in os.listdir(folder) if not f.startswith(".")} if os.path.isdir(folder) else set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--min_s", type=float, default=2.0, help="earliest kill after a (re)start")
    parser.add_argument("--max_s", type=float, default=12.0, help="latest kill after a (re)start")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = tempfile.mkdtemp(prefix="amago_faults_")
    run_dir, fifo = os.path.join(out, RUN), os.path.join(out, RUN, "buffer", "fifo")
    cmd = [sys.executable, os.path.join(ROOT, "examples", "toy.py"), "--buffer_dir", out, "--run_name", RUN]
    cmd += ["--epochs", str(args.epochs), "--resume", "--gin", "Experiment.ckpt_interval = 1"]
    cmd += ["--gin", "DiskTrajDataset.dset_max_size = 1000000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    seen: set[str] = set()
    kills, finished_early = 0, False
    for _ in range(args.kills):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(args.min_s, args.max_s))
        if proc.poll() is not None:
            finished_early = True  # the run completed before this kill: start it over to keep killing
            seen |= visible_files(fifo)
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        seen |= visible_files(fifo)
        print(f"kill {kills}: {len(seen)} trajectory files so far", flush=True)

    final = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if final.returncode != 0:
        sys.exit(f"the final resume failed:\n{final.stderr[-3000:]}")

    lost = [f for f in seen if f not in visible_files(fifo)]
    corrupt = []
    for f in visible_files(fifo):
        try:
            load_trajectory(os.path.join(fifo, f))
        except TrajectoryFileError:
            corrupt.append(f)
    bad_ckpts = []
    states = os.path.join(run_dir, "ckpts", "training_states")
    for name in os.listdir(states):
        if name.endswith(".tmp"):
            continue  # an interrupted write: never listed as a checkpoint
        try:
            torch.load(os.path.join(states, name, "state.pt"), weights_only=False)
        except Exception:  # noqa: BLE001
            bad_ckpts.append(name)
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if line.strip()]
    frames = [r["total_frames"] for r in rows]
    # a resume restarts from the last checkpoint, so epochs logged after it may repeat; frames at the same epoch
    # must then agree, and the final counters must equal an uninterrupted run's
    by_epoch: dict[int, set[float]] = {}
    for r in rows:
        by_epoch.setdefault(int(r["epoch"]), set()).add(r["total_frames"])
    inconsistent = {e: v for e, v in by_epoch.items() if len(v) > 1}
    print(f"\nkills survived: {kills}{' (the run finished before the last one)' if finished_early else ''}")
    print(f"trajectory files seen after kills: {len(seen)}, lost: {len(lost)}, unreadable: {len(corrupt)}")
    print(f"checkpoints: {len(os.listdir(states))}, unreadable: {len(bad_ckpts)}")
    print(
        f"final epoch {rows[-1]['epoch']}, frames {frames[-1]:.0f}, epochs logged with different counters: {len(inconsistent)}"
    )
    ok = not lost and not corrupt and not bad_ckpts and not inconsistent and rows[-1]["epoch"] == args.epochs
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
