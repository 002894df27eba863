"""Wall time of whole training runs, sequential (collect, then train, each epoch) against overlapped (--overlap:
a collector process steps the envs while the learner trains), at equal env steps and equal updates.

    python benchmarks/end_to_end.py [--epochs 30] [--toy_epochs 6] [--skip_toy] [--val_interval N] [--ckpt_interval N]

Runs, one after another in temporary folders, each as its own process and with torch's thread counts left to
the roles (a sequential run and a learner take half the CPUs, a collector 1):

- Meta-World ML1 reach-v3 with configs/metaworld/quick.gin (8 sync envs, 450 steps per actor and 100 updates of
  16 x 64 per epoch, the tiny model), ``--epochs`` epochs, sequential then ``--overlap``. 30 epochs take about
  3 minutes sequential on 2 cores; at 10, the one-off start-up of the two processes would be most of what
  separates the modes, while a real run is hundreds of epochs long. Evaluation is off unless ``--val_interval``,
  and only the final checkpoint is written unless ``--ckpt_interval``: both run in the learner in either mode
  (quick.gin's checkpoint every epoch also redraws every plot, seconds of CPU an epoch) and would only dilute
  the comparison of collecting beside training;
- the toy meta-bandit (examples/toy.py, configs/bandit.gin), the same two ways.

For each it prints wall seconds (process start to exit), env steps/s and updates/s over that time, the CPU seconds
of its processes (an overlapped run's learner and collector apart), the wall seconds per epoch after the first (from
metrics.jsonl: the rate a long run goes on at, without the one-off start-up and, overlapped, the wait for the first
whole meta-episodes), what the sequential run's epochs spent collecting and learning (their rows'
``collect_seconds`` and ``learn_seconds``) with the gain perfect overlap of the two would give, and the counters of
the last epoch row of metrics.jsonl, which must match between the two modes (it exits non-zero if they do not). On a
shared machine the wall times follow the load; the CPU seconds say what 2 idle cores would allow at most. The last
line is the Meta-World speedup: ``overlap speedup: X.XXx`` (sequential wall / overlapped wall). The machine's load
average is printed before and after, with how much work two single-threaded processes side by side do against one
(2.00 on two idle cores; on a machine other jobs fill, less): the rates and the speedup depend on what else runs.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from amago_like.logging import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def epoch_rows(run_dir: str) -> list[dict[str, float]]:
    return [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "epoch_seconds" in r]


def steady_epoch_seconds(rows: list[dict[str, float]]) -> float:
    """Wall seconds per epoch after the first (NaN with one epoch): what every further epoch of a long run costs.
    The first holds the one-off waits: an overlapped learner's for its collector's start-up and first
    meta-episodes, which are trainable only once they end."""
    if len(rows) < 2:
        return float("nan")
    return (rows[-1]["wall_seconds"] - rows[0]["wall_seconds"]) / (len(rows) - 1)


def phase_seconds(rows: list[dict[str, float]]) -> tuple[float, float, float]:
    """Over the epochs after the first: seconds collecting, seconds learning, and what perfect overlap would
    leave of the two (each epoch as long as the longer of its phases)."""
    steady = rows[1:]
    collect = [r.get("collect_seconds", 0.0) for r in steady]
    learn = [r.get("learn_seconds", 0.0) for r in steady]
    return sum(collect), sum(learn), sum(map(max, collect, learn))


def timed_run(name: str, command: list[str], out: str, run_dir: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}  # thread counts follow the roles
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    start, cpu = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run's processes, its collector included
    cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(os.path.join(out, f"{name}.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    rows = epoch_rows(run_dir)
    frames, updates, steady = rows[-1]["total_frames"], rows[-1]["grad_updates"], steady_epoch_seconds(rows)
    # an overlapped learner prints its own CPU seconds and its collector's
    split = re.search(r"collectors \(and other child processes\) ([\d.]+), learner ([\d.]+)", done.stdout)
    where = f" (learner {split[2]}, collector {split[1]})" if split else ""
    print(f"{name:22s} wall {wall:6.1f} s | env steps {frames:7.0f} ({frames / wall:6.1f}/s) | updates {updates:5.0f} "
          f"({updates / wall:5.2f}/s) | CPU {cpu:6.1f} s{where} | {steady:.2f} s per epoch after the first", flush=True)  # fmt: skip
    busiest = max(float(split[1]), float(split[2])) if split else cpu
    collect, learn, perfect = phase_seconds(rows)
    return {"wall": wall, "frames": frames, "updates": updates, "busiest": busiest, "steady": steady,
            "collect": collect, "learn": learn, "perfect": perfect}  # fmt: skip


def compare(label: str, base: list[str], out: str, run_name: str) -> float:
    """Sequential then overlapped runs of ``base``; returns the speedup (sequential wall / overlapped wall)."""
    results = {}
    for mode, extra in (("sequential", []), ("overlapped", ["--overlap"])):
        name = f"{run_name}_{mode}"
        command = [*base, "--buffer_dir", out, "--run_name", name, *extra]
        results[mode] = timed_run(f"{label} {mode}", command, out, os.path.join(out, name))
    seq, ovl = results["sequential"], results["overlapped"]
    same = (seq["frames"], seq["updates"]) == (ovl["frames"], ovl["updates"])
    print(f"{label}: env steps {seq['frames']:.0f} / {ovl['frames']:.0f}, updates {seq['updates']:.0f} / "
          f"{ovl['updates']:.0f} (sequential / overlapped): {'the same' if same else 'DIFFERENT'}; "
          f"speedup {seq['wall'] / ovl['wall']:.2f}x", flush=True)  # fmt: skip
    # what the CPU time allows on 2 idle cores: each process on a core of its own, never waiting
    print(f"{label}: on 2 idle cores the CPU time would allow at most {seq['busiest'] / ovl['busiest']:.2f}x "
          f"(sequential CPU / the busier overlapped process's CPU)", flush=True)  # fmt: skip
    print(f"{label}: after the first epoch (what each further epoch of a long run gains) {seq['steady']:.2f} / "
          f"{ovl['steady']:.2f} s per epoch: {seq['steady'] / ovl['steady']:.2f}x", flush=True)  # fmt: skip
    if seq["perfect"] > 0:  # what overlapping can save at most: the shorter phase of every epoch
        print(f"{label}: the sequential epochs after the first spent {seq['collect']:.1f} s collecting and "
              f"{seq['learn']:.1f} s learning: perfect overlap would make the two phases "
              f"{(seq['collect'] + seq['learn']) / seq['perfect']:.2f}x faster", flush=True)  # fmt: skip
    if not same:
        sys.exit(f"{label}: the two modes did not reach the same env steps and updates")
    return seq["wall"] / ovl["wall"]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


PROBE = """
import time, torch
torch.set_num_threads(1)
a, start = torch.randn(256, 256), time.time()
for _ in range(1000):
    a = torch.tanh(a @ a * 0.01)
print(time.time() - start)
"""


def parallel_capacity() -> float:
    """How many single-threaded torch processes' worth of work the machine does now with two side by side (2.0 on
    two idle cores): an overlapped run can only gain what this leaves it."""
    probe = lambda: subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, text=True)  # noqa: E731
    alone = float(probe().communicate()[0])
    pair = [probe(), probe()]
    return sum(alone / float(p.communicate()[0]) for p in pair)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="Meta-World epochs (default: %(default)s)")
    parser.add_argument("--toy_epochs", type=int, default=6, help="meta-bandit epochs (default: %(default)s)")
    parser.add_argument("--skip_toy", action="store_true")
    parser.add_argument("--val_interval", default="None", help="Experiment.val_interval of both (default: off)")
    parser.add_argument(
        "--ckpt_interval", default="None", help="Experiment.ckpt_interval of both (default: only the final checkpoint)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folders (their path is printed)")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="amago_end_to_end_")
    print(f"{os.cpu_count()} CPUs, load average {load()} (1, 5, 15 min); runs in {out}", flush=True)
    print(
        f"two processes side by side do {parallel_capacity():.2f}x the work of one (2.00 on 2 idle cores)", flush=True
    )
    common = ["--seed", "0", "--gin", f"Experiment.val_interval = {args.val_interval}"]
    common += ["--gin", f"Experiment.ckpt_interval = {args.ckpt_interval}"]
    try:
        if not args.skip_toy:
            toy = [sys.executable, "examples/toy.py", "--epochs", str(args.toy_epochs), *common]
            compare("toy bandit", toy, out, "toy")
        metaworld = [sys.executable, "examples/metaworld.py", "--benchmark", "reach-v3", "--epochs", str(args.epochs)]
        speedup = compare("metaworld reach-v3", [*metaworld, *common], out, "reach")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"load average after: {load()}; two processes side by side now do {parallel_capacity():.2f}x the work of one")
    print(f"overlap speedup: {speedup:.2f}x")


if __name__ == "__main__":
    main()
