"""Process roles: what the actor/learner split changes in each process, and the overlapped mode (issue 22).

``--mode collect|learn`` (``Experiment.role``) splits acting from learning across processes the user starts.
``--overlap`` (``Experiment.overlap = True``) runs the split from one command: the process becomes the learner
and spawns one collector, the same command line with ``--mode collect`` (and the run's seed, 1 torch thread),
which keeps stepping the training envs into the disk buffer while the learner trains. The two talk through
small files in ``{run_dir}/overlap/`` and the latest policy:

- ``learner.json``: the updates the learner has done and the update count of the policy it last published to
  ``ckpts/latest/policy.pt`` (every ``overlap_publish_every`` updates and after every epoch's last). The
  collector loads each new policy between chunks of env steps and throttles on the updates done.
- ``collector.json``: the env steps the collector has taken. The learner paces its updates on them and logs
  them as its ``total_frames``.
- ``collector.log``: the collector's output, named by the learner when the collector fails.

The replay ratio (:class:`Pace`, updates per env step) ties the two together: update ``u`` waits until the
collector has taken ``u / ratio`` env steps, and the collector waits while it is more than one epoch's env steps
ahead of the updates done. Its default is the sequential schedule's own, ``train_batches_per_epoch`` updates per
epoch of env steps, so an overlapped run takes the same env steps and makes the same updates as the sequential
run of its command. Sequential stays the default: there each epoch's data is collected with the policy of the
epoch before, exactly and reproducibly; overlapped, which policy collects which step depends on timing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from amago_like.callbacks import Callback
from amago_like.data.dataset import DataFeed
from amago_like.io import atomic_write_text
from amago_like.learner import planned_updates
from amago_like.rollout import RolloutStats

NEVER = 2**62  # an epoch that never comes
# actor/learner split: what each role changes. collect: act with the newest policy the learner wrote, never
# train or prune; learn: train on what collectors write, publish the policy every epoch
ROLE_SETTINGS = {
    "collect": dict(start_learning_at_epoch=NEVER, always_load_latest=True, always_save_latest=False,
                    ckpt_interval=None, has_dset_edit_rights=False),
    "learn": dict(start_collecting_at_epoch=NEVER, always_save_latest=True, always_load_latest=False),
}  # fmt: skip
# on top of those, in an overlapped run. The learner publishes the policy itself (OverlapFeed); the collector
# loads it between chunks, leaves evaluation to the learner (val/ rows stay in metrics.jsonl) and logs to
# metrics_collect.jsonl only (the run's wandb run is the learner's)
OVERLAP_SETTINGS = {
    "learn": dict(always_save_latest=False),
    "collect": dict(always_load_latest=False, val_interval=None, log_to_wandb=False),
}
#: set in a spawned collector's environment: the pid of the learner that spawned it (cli.py names it too)
PARENT_ENV = "AMAGO_LIKE_OVERLAP_LEARNER"
# launcher variables a collector must not inherit: it is a one-process run of its own
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
CHUNKS_PER_EPOCH = 10  # the collector looks for new weights and for its throttle this often an epoch
POLL_SECONDS = 0.01  # how often a waiting learner or collector looks at the other's file
REFRESH_SECONDS = 1.0  # how often a training learner re-lists the buffer for the collector's new files
FIX = "drop --overlap (Experiment.overlap) for the actor/learner split, or drop --mode (Experiment.role)"


class CollectorFailed(RuntimeError):
    """The collector of an overlapped run stopped before its end, or never reported the env steps needed."""


# ------------------------------------------------------------------ settings and checks
def role_settings(role: str, overlap: bool) -> dict[str, Any]:
    """The Experiment settings ``role`` changes (an overlapped run's own process plays the learner)."""
    if overlap and role == "both":
        return {**ROLE_SETTINGS["learn"], **OVERLAP_SETTINGS["learn"], "role": "learn"}
    return {**ROLE_SETTINGS.get(role, {}), **(OVERLAP_SETTINGS[role] if overlap else {})}


def run_files(role: str, overlap: bool) -> tuple[str, str]:
    """The metrics file and the config file a process writes into the run folder: a collector does not
    overwrite the learner's; a spawned one keeps its config beside its log."""
    if role != "collect":
        return "metrics.jsonl", "config.gin"
    return "metrics_collect.jsonl", os.path.join("overlap", "collector.gin") if overlap else "config.gin"


def check_overlap(arguments: dict[str, Any]) -> None:
    """ValueError naming the problem and the fix for settings an overlapped run cannot honour, and for the
    overlap settings given to a sequential run (which would do nothing)."""
    ratio, every = arguments["overlap_updates_per_env_step"], arguments["overlap_publish_every"]
    if not arguments["overlap"]:
        for name, value in (("overlap_updates_per_env_step", ratio), ("overlap_publish_every", every)):
            if value is not None:
                raise ValueError(f"Experiment.{name} = {value} applies to overlapped runs only: add --overlap "
                                 f"(Experiment.overlap = True) or leave it unset")  # fmt: skip
        return
    role = arguments["role"]
    if role == "learn" or (role == "collect" and PARENT_ENV not in os.environ):
        raise ValueError(f"--overlap with --mode {role}: an overlapped run is one learner that spawns its own "
                         f"collector; {FIX}")  # fmt: skip
    if arguments["start_collecting_at_epoch"] > 0:
        raise ValueError("--overlap with Experiment.start_collecting_at_epoch > 0: an overlapped run collects from "
                         "the start; drop --overlap for offline epochs first")  # fmt: skip
    if arguments["train_timesteps_per_epoch"] == 0:
        raise ValueError("--overlap with Experiment.train_timesteps_per_epoch = 0: nothing to collect beside the "
                         "learner; drop --overlap")  # fmt: skip
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio < math.inf):
        raise ValueError(f"Experiment.overlap_updates_per_env_step must be a number > 0, got {ratio!r}")
    if every is not None and not (isinstance(every, int) and every >= 1):
        raise ValueError(f"Experiment.overlap_publish_every must be None (10 times an epoch) or >= 1, got {every!r}")


# ------------------------------------------------------------------ the replay ratio, as arithmetic
class Pace:
    """The replay-ratio control of an overlapped run: ``ratio`` updates per env step, after ``offset`` env steps
    collected before learning starts. Update ``u`` (1, 2, ...) may run once ``offset + u / ratio`` env steps
    were taken (never more than the ``frames`` the run collects in all); collectors may start a chunk of steps
    while they are less than ``window`` env steps ahead of what the updates done allow, and stop at ``frames``.
    Once the learner has made its ``updates``, the throttle is off."""

    def __init__(self, ratio: Fraction, offset: int, window: int, frames: int, updates: int):
        self.ratio, self.offset, self.window, self.frames, self.updates = ratio, offset, window, frames, updates

    def frames_needed(self, update: int) -> int:
        """Env steps the collectors must have taken before update number ``update`` runs."""
        return min(self.offset + math.ceil(update / self.ratio), self.frames)

    def may_step(self, frames: int, updates_done: int) -> bool:
        """Whether collectors that have taken ``frames`` env steps may step on, ``updates_done`` updates made.
        The steps the learner's next update needs are always allowed, so the two never wait for each other."""
        if frames >= self.frames:
            return False
        if updates_done >= self.updates or frames < self.frames_needed(updates_done + 1):
            return True
        return frames < self.offset + updates_done / self.ratio + self.window

    @classmethod
    def of(cls, arguments: dict[str, Any], processes: int = 1) -> Pace:
        """The pace of Experiment's ``arguments`` (as given, before the role's settings): one epoch of env steps
        is ``train_timesteps_per_epoch x parallel_actors x processes``; the default ratio is the sequential
        schedule's, ``train_batches_per_epoch`` updates per epoch of env steps."""
        epoch = arguments["train_timesteps_per_epoch"] * arguments["parallel_actors"] * processes
        batches, epochs = arguments["train_batches_per_epoch"], arguments["epochs"]
        given = arguments["overlap_updates_per_env_step"]
        ratio = Fraction(batches, epoch) if given is None else Fraction(str(given))
        learning_from = min(arguments["start_learning_at_epoch"], epochs)
        updates = planned_updates(epochs, learning_from, batches)
        return cls(ratio or Fraction(1, NEVER), learning_from * epoch, epoch, epochs * epoch, updates)


# ------------------------------------------------------------------ the files the two processes share
def write_json(path: str, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` by a rename, so a reader sees the old or the new. Not synced: after a crash
    both processes restart and these files are written afresh."""
    atomic_write_text(path, json.dumps(data), sync=False)


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class OverlapFiles:
    """Paths in ``{run_dir}/overlap/`` (see the module's description)."""

    def __init__(self, run_dir: str):
        self.folder = os.path.join(run_dir, "overlap")
        os.makedirs(self.folder, exist_ok=True)
        self.learner = os.path.join(self.folder, "learner.json")
        self.collector = os.path.join(self.folder, "collector.json")
        self.log = os.path.join(self.folder, "collector.log")


def check_one_process(processes: int) -> None:
    if processes > 1:
        raise ValueError(f"--overlap with {processes} processes: an overlapped run is one learner process; under "
                         "accelerate launch run --mode learn, with --mode collect processes beside it")  # fmt: skip


def attach(experiment: Any) -> None:
    """Give an overlapped run's process its side (called by ``Experiment.start``): the learner an
    :class:`OverlapFeed`, the spawned collector a :class:`PacedCollector`."""
    if not experiment.overlap:
        return
    check_one_process(experiment.accelerator.num_processes)
    pace = Pace.of(experiment._arguments)
    if experiment.role == "collect":
        experiment._collector = PacedCollector(experiment, pace, int(os.environ[PARENT_ENV]))
    else:
        batches = experiment.train_batches_per_epoch
        every = experiment.overlap_publish_every or max(1, batches // CHUNKS_PER_EPOCH)
        experiment._feed = OverlapFeed(experiment, pace, every)


# ------------------------------------------------------------------ the learner's side
class OverlapFeed(DataFeed):
    """The data an overlapped run's learner sees: each update waits for the env steps :class:`Pace` asks of the
    collector (and for a dataset to train on), the policy is published every ``publish_every`` updates and after
    an epoch's last, the buffer is re-listed while training (new files) and kept to its FIFO bound, the learner's
    ``total_frames`` follow the collector's reports, and a collector that died stops the learner."""

    def __init__(self, experiment: Any, pace: Pace, publish_every: int):
        super().__init__(experiment.dataset)
        self.exp, self.pace, self.publish_every = experiment, pace, publish_every
        self.files = OverlapFiles(experiment.run_dir)
        self.collector: CollectorProcess | None = getattr(experiment, "_collector_process", None)  # (overlapped())
        self.restart()
        self._measured = {"wait_seconds": 0.0, "publish_seconds": 0.0, "publishes": 0}
        self._buffer_metrics: dict[str, float] = {}

    def restart(self) -> None:
        """After a loaded checkpoint: the pace counts every batch trained, skipped non-finite ones too. The count
        goes to the collector at once: after a resume it may collect (with the checkpoint's weights, which it
        loaded too) before the learner has published anything."""
        self.updates = self.exp.grad_updates + self.exp.bad_updates
        self.published = -1
        self._refreshed = 0.0
        self.write_progress()

    # -- the collector's progress
    def collector_frames(self) -> int | None:
        """The env steps the collector reported, which become the learner's ``total_frames``; the learner's own
        (idle) training rollout mirrors the collector's exploration schedule, so that a checkpoint holds it."""
        frames = read_json(self.files.collector).get("frames")
        if frames is not None and frames > self.exp.total_frames:
            self.exp.total_frames = frames
            rollout = self.exp.train_rollout
            if rollout.explores:  # the collector's parallel_actors step in lockstep
                rollout.explore_steps = frames // self.exp.parallel_actors
        return frames

    def frames(self, frames: int) -> int:
        reported = self.collector_frames()
        return frames if reported is None else max(frames, reported)

    def write_progress(self, done: bool = False, starving: bool = False) -> None:
        """``starving``: the env steps are there but no trajectory has finished yet; the collector then steps on
        regardless of its throttle (the learner cannot update, and only more steps end an episode)."""
        progress = {"updates": self.updates, "policy": self.published, "done": done, "starving": starving}
        write_json(self.files.learner, progress)

    def publish(self) -> None:
        """The policy to ``ckpts/latest/policy.pt``, then its update count to ``learner.json``."""
        start = time.time()
        self.exp.write_latest_policy()
        self.published = self.updates
        self.write_progress()
        self._measured["publish_seconds"] += time.time() - start
        self._measured["publishes"] += 1

    def check_collector(self, needed: int, frames: int) -> None:
        if self.collector is None:
            raise CollectorFailed("Experiment.overlap = True, but no collector was spawned: an overlapped run starts "
                                  "from the command line (amago_like.cli.run spawns it), e.g. examples/toy.py --overlap")  # fmt: skip
        status = self.collector.poll()
        if status not in (None, 0):
            raise CollectorFailed(self.collector.failure(status))
        if status == 0 and frames < needed:
            raise CollectorFailed(f"the collector ended after {frames} env steps, but update {self.updates + 1} needs "
                                  f"{needed}; its log: {self.files.log}")  # fmt: skip

    # -- waiting and pacing
    def wait(self, seconds: float, say=None) -> bool:
        """Wait up to ``seconds`` for a dataset to train on and the env steps the next update needs."""
        return self._wait_for(self.updates + 1, seconds, say)

    def _wait_for(self, update: int, seconds: float, say=None) -> bool:
        needed, start = self.pace.frames_needed(update), time.time()
        if self.published < 0:  # the policy it trains from (fresh or loaded) is the one to collect with
            self.publish()
        while True:
            frames = self.frames(self.exp.total_frames)
            self.check_collector(needed, frames)
            if frames >= needed and (
                time.time() - self._refreshed > REFRESH_SECONDS or not self.dataset.ready_for_training
            ):
                self.dataset.refresh_files()  # the collector's new files
                self._refreshed = time.time()
            if frames >= needed and self.dataset.ready_for_training:
                self._measured["wait_seconds"] += time.time() - start
                return True
            if time.time() - start >= seconds:
                return False
            if say is not None and not self.dataset.ready_for_training:
                say(f"waiting up to {seconds:g} s for the collector's env steps ({needed} for update {update}) and "
                    f"data: {self.dataset.get_description()}")  # fmt: skip
                say = None
            self.write_progress(starving=frames >= needed)  # the collector may be throttled on the updates done
            time.sleep(POLL_SECONDS)

    def batches(self, loader: Any) -> _Paced:
        return _Paced(self, loader)

    def _paced(self, loader: Any) -> Iterator[Any]:
        batches = iter(loader)
        for _ in range(len(loader)):
            if not self._wait_for(self.updates + 1, self.exp.wait_for_data_seconds):
                raise CollectorFailed(f"the learner waited {self.exp.wait_for_data_seconds:g} s (Experiment."
                                      f"wait_for_data_seconds) for the collector's env steps; its log: {self.files.log}")  # fmt: skip
            yield next(batches)
            self.updates += 1
            if self.updates % self.publish_every == 0:
                self.publish()
            else:
                self.write_progress()
        if self.published != self.updates:
            self.publish()
        # what a sequential run does after collecting: the FIFO bound (where this process may delete), buffer metrics
        self._buffer_metrics = self.dataset.on_end_of_collection()

    def metrics(self) -> dict[str, float]:
        """This epoch's waiting for the collector and publishing, then the counts start again."""
        measured = {f"overlap/learner_{k}": float(v) for k, v in self._measured.items()} | self._buffer_metrics
        self._measured, self._buffer_metrics = dict.fromkeys(self._measured, 0.0), {}
        return measured


class _Paced:
    """The loader's batches through :meth:`OverlapFeed._paced`, with the loader's length (for progress bars)."""

    def __init__(self, feed: OverlapFeed, loader: Any):
        self.feed, self.loader = feed, loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        return self.feed._paced(self.loader)


class CollectorProcess:
    """The spawned collector: its output goes to ``log``; :meth:`stop` ends it (terminate, then kill)."""

    def __init__(self, command: list[str], log: str):
        self.command, self.log = command, log
        env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
        env.update({PARENT_ENV: str(os.getpid()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        with open(log, "ab") as out:  # the child holds its own copy of the file
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def poll(self) -> int | None:
        return self.proc.poll()

    def failure(self, status: int) -> str:
        last = ""
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-50:] if line.strip()]
            last = f" ({lines[-1][:300]})" if lines else ""
        return f"the collector (pid {self.proc.pid}) exited with status {status}{last}; its log: {self.log}"

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def collector_command() -> list[str]:
    """This process's command line as a collector: ``--mode collect``, 1 torch thread."""
    return [sys.executable, *sys.argv, "--mode", "collect", "--gin", "Experiment.torch_threads = 1"]


@contextlib.contextmanager
def overlapped(experiment: Any) -> Iterator[None]:
    """For ``cli.run``, around an overlapped learner's start-up and ``learn()``: its collector runs, spawned
    first so that the two start up side by side (the learner publishes the policy it trains from before its
    first update; until then the collector acts with its own, as seeded). On the way out the learner says it is
    done and waits for the collector to stop (a failure raises :class:`CollectorFailed` naming its log); if the
    learner fails, the collector is ended with it. Other runs: nothing."""
    if not (experiment.overlap and experiment.role == "learn"):
        yield
        return
    check_one_process(int(os.environ.get("WORLD_SIZE", 1)))  # before anything is spawned
    files = OverlapFiles(experiment.run_dir)
    for stale in (files.learner, files.collector):  # a killed run's: the collector throttles on a fresh one
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    collector = experiment._collector_process = CollectorProcess(collector_command(), files.log)
    if experiment.verbose:
        print(f"overlap: collector pid {collector.proc.pid}, its log {files.log}")
    try:
        yield
        write_json(files.learner, {**read_json(files.learner), "done": True})
        try:
            status = collector.proc.wait(max(60.0, experiment.wait_for_data_seconds))
        except subprocess.TimeoutExpired:
            status = None
        if status != 0:
            raise CollectorFailed(collector.failure(status) if status is not None else
                                  f"the collector did not stop after the learner ended; its log: {files.log}")  # fmt: skip
        if experiment.verbose:  # where the time went: the collector's CPU (its env steps and acting), and ours
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            own = resource.getrusage(resource.RUSAGE_SELF)
            print(f"overlap: CPU seconds: collector (and other child processes) {used.ru_utime + used.ru_stime:.1f}, learner "
                  f"{own.ru_utime + own.ru_stime:.1f}")  # fmt: skip
    finally:
        collector.stop()


# ------------------------------------------------------------------ the collector's side
class PacedCollector(Callback):
    """A spawned collector's stepping: in chunks of a tenth of an epoch, each started when :class:`Pace` allows,
    with the newest policy the learner published, its env steps reported after each; the run's env-step budget
    or the learner's end stops it (a callback ends the epoch loop). It exits when its learner is gone, also
    one killed with SIGKILL (a watchdog thread polls the parent pid), and takes SIGTERM as an exit that closes
    the envs."""

    def __init__(self, experiment: Any, pace: Pace, parent: int):
        self.exp, self.pace, self.parent = experiment, pace, parent
        self.files = OverlapFiles(experiment.run_dir)
        self.loaded, self.learner_done = -1, False
        self._measured = {"throttle_seconds": 0.0, "policy_loads": 0}
        experiment.callbacks.append(self)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        threading.Thread(target=self._watch_parent, daemon=True, name="overlap-watchdog").start()

    def _watch_parent(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(0.5)
        print(f"the learner (pid {self.parent}) is gone: the collector stops", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # files are written by rename: stopping anywhere loses nothing written

    def _learner(self) -> dict[str, Any]:
        learner = read_json(self.files.learner)
        self.learner_done = bool(learner.get("done", False))
        return learner

    def _throttle(self, frames: int) -> None:
        start = time.time()
        while True:
            learner = self._learner()
            if self.learner_done or learner.get("starving") or self.pace.may_step(frames, learner.get("updates", 0)):
                break
            time.sleep(POLL_SECONDS)
        self._measured["throttle_seconds"] += time.time() - start

    def _load_newer_policy(self) -> None:
        version = self._learner().get("policy", -1)
        if version > self.loaded and self.exp.read_latest_policy():
            self.loaded = version
            self._measured["policy_loads"] += 1

    def collect(
        self, policy: Any, timesteps: int, sample: bool = True, seed: int | None = None, desc: str = ""
    ) -> RolloutStats:
        """Like ``Rollout.collect`` for the training envs: ``timesteps`` steps per actor, fewer where the budget
        ends, none once the learner is done."""
        rollout, base = self.exp.train_rollout, self.exp.total_frames
        steps = min(timesteps, max(0, self.pace.frames - base) // rollout.num_envs)
        chunk = max(1, math.ceil(timesteps / CHUNKS_PER_EPOCH))
        total = RolloutStats(num_envs=rollout.num_envs)
        while total.steps < steps:
            self._throttle(base + total.frames)
            if self.learner_done:
                break
            self._load_newer_policy()
            part = rollout.step(policy, min(chunk, steps - total.steps), sample, seed, desc)
            total.episodes += part.episodes
            total.actors += part.actors
            total.steps += part.steps
            write_json(self.files.collector, {"frames": base + total.frames})
        total.metrics = {f"overlap/{k}": float(v) for k, v in self._measured.items()}
        total.metrics["overlap/policy_updates"] = float(self.loaded)  # the learner's updates behind the policy
        self._measured = dict.fromkeys(self._measured, 0.0)
        return total

    def on_epoch_end(self, experiment: Any, metrics: dict[str, float]) -> bool:
        return self.learner_done or experiment.total_frames >= self.pace.frames
