"""Kill a training run with SIGKILL at random moments, resume it each time, and check nothing was lost.

    python benchmarks/fault_injection.py --kills 10
    python benchmarks/fault_injection.py --kills 6 --overlap [--collectors 2]

Runs `examples/toy.py` (meta-bandit) in a temporary folder with a checkpoint every epoch. After each kill
it records every visible trajectory file and the newest complete checkpoint, then resumes with --resume.
At the end it checks: every trajectory file seen after any kill still exists and loads (the FIFO bound is
set far above what the run writes, so nothing may be deleted), every checkpoint loads, and the counters
in metrics.jsonl never move backwards across a resume. Prints kills survived and files lost.

With --overlap the run is overlapped (a learner and the collector it spawns) and resumed with --overlap
--resume. Kills alternate between the learner's whole process group (learner and collector at once) and the
learner alone, after which its collector must exit by itself within 10 s (counted as orphans if not; one
still running is killed before the resume). An overlapped run's frames at an epoch depend on timing, so
instead of equal counters per epoch it checks that they never go back and end at the run's budget.
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


def collectors_of(buffer_dir: str, wait_s: float = 0.0) -> list[int]:
    """Pids of live collector processes (``--mode collect``) of runs in ``buffer_dir``, after waiting up to
    ``wait_s`` seconds for them to exit (zombies count as exited)."""
    deadline = time.time() + wait_s
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                zombie = "\nState:\tZ" in open(f"/proc/{pid}/status").read()
            except OSError:
                continue
            if not zombie and b"collect" in cmdline and buffer_dir.encode() in cmdline:
                found.append(int(pid))
        if not found or time.time() >= deadline:
            return found
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--min_s", type=float, default=2.0, help="earliest kill after a (re)start")
    parser.add_argument("--max_s", type=float, default=12.0, help="latest kill after a (re)start")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overlap", action="store_true", help="an overlapped run (learner + spawned collector)")
    parser.add_argument("--collectors", type=int, default=1, help="with --overlap: collectors the learner spawns")
    args = parser.parse_args()
    if args.collectors != 1 and not args.overlap:
        parser.error("--collectors needs --overlap")
    rng = random.Random(args.seed)
    out = tempfile.mkdtemp(prefix="amago_faults_")
    run_dir, fifo = os.path.join(out, RUN), os.path.join(out, RUN, "buffer", "fifo")
    cmd = [sys.executable, os.path.join(ROOT, "examples", "toy.py"), "--buffer_dir", out, "--run_name", RUN]
    cmd += ["--epochs", str(args.epochs), "--resume", "--gin", "Experiment.ckpt_interval = 1"]
    cmd += ["--gin", "DiskTrajDataset.dset_max_size = 1000000"]
    cmd += ["--overlap", "--collectors", str(args.collectors)] if args.overlap else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    seen: set[str] = set()
    kills, finished_early, orphans = 0, False, 0
    for _ in range(args.kills):
        # its own process group: the learner's collector is in it
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(rng.uniform(args.min_s, args.max_s))
        if proc.poll() is not None:
            finished_early = True  # the run completed before this kill: start it over to keep killing
            seen |= visible_files(fifo)
            break
        alone = args.overlap and kills % 2 == 1
        if alone:
            proc.send_signal(signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        left = collectors_of(out, wait_s=10.0 if alone else 2.0)
        orphans += len(left)
        for pid in left:  # so that no two collectors write at once after the resume
            os.kill(pid, signal.SIGKILL)
        seen |= visible_files(fifo)
        what = "the learner alone" if alone else "the process group"
        print(f"kill {kills} ({what}): {len(seen)} trajectory files so far, collectors left running: {len(left)}",
              flush=True)  # fmt: skip

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
    if args.overlap:  # frames depend on timing: they never go back and end at the budget (12 epochs x 30 x 8 each)
        updates = [r["grad_updates"] for r in rows]
        backwards = frames != sorted(frames) or updates != sorted(updates)
        inconsistent = {"counters": "go back"} if backwards else {}
        if frames[-1] != args.epochs * 30 * 8 * args.collectors or updates[-1] != args.epochs * 100:
            inconsistent["final"] = (frames[-1], updates[-1])
    print(f"\nkills survived: {kills}{' (the run finished before the last one)' if finished_early else ''}")
    print(f"trajectory files seen after kills: {len(seen)}, lost: {len(lost)}, unreadable: {len(corrupt)}")
    print(f"checkpoints: {len(os.listdir(states))}, unreadable: {len(bad_ckpts)}")
    if args.overlap:
        print(f"collectors left running after a kill: {orphans}, after the final run: {len(collectors_of(out))}")
    print(
        f"final epoch {rows[-1]['epoch']}, frames {frames[-1]:.0f}, epochs logged with different counters: {len(inconsistent)}"
    )
    ok = not lost and not corrupt and not bad_ckpts and not inconsistent and rows[-1]["epoch"] == args.epochs
    ok = ok and not orphans and not collectors_of(out)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
