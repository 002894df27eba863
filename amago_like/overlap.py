"""Process roles: what the actor/learner split changes in each process, and the overlapped mode (issue 22).

``--mode collect|learn`` (``Experiment.role``) splits acting from learning across processes the user starts.
``--overlap`` (``Experiment.overlap = True``) runs the split from one command: the process becomes the learner
and spawns ``overlap_collectors`` collectors (default 1), each the same command line with ``--mode collect`` (and
1 torch thread), which keep stepping ``parallel_actors`` training envs each into the disk buffer while the learner
trains. They talk through small files in ``{run_dir}/overlap/`` and the latest policy (collector ``i`` >= 1 has
``collector_i`` where these name ``collector``):

- ``learner.json``: the updates the learner has done and the update count of the policy it last published to
  ``ckpts/latest/policy.pt`` (every ``overlap_publish_every`` updates and after every epoch's last). The
  collectors load each new policy between chunks of env steps and throttle on the updates done.
- ``collector.json``: the env steps the collector has taken. The learner paces its updates on the sum over the
  collectors and logs it as its ``total_frames``.
- ``collector.log``: the collector's output, named by the learner when the collector fails.

The replay ratio (:class:`Pace`, updates per env step) ties them together: update ``u`` waits until the
collectors have taken ``u / ratio`` env steps, and a collector waits while they are more than one epoch's env
steps ahead of the updates done. Its default is the sequential schedule's own, ``train_batches_per_epoch`` updates
per epoch of env steps (an epoch: ``train_timesteps_per_epoch`` steps of every collector's actors, as of every
process's in a multi-process run), so an overlapped run with one collector takes the same env steps and makes
the same updates as the sequential run of its command. Several collectors are for machines whose cores one
collector cannot keep busy: while one acts (the policy's forward), the others' envs step. Sequential stays the
default: there each epoch's data is collected with the policy of the epoch before, exactly and reproducibly;
overlapped, which policy collects which step depends on timing. The pace and the files are in
:mod:`amago_like.overlap_protocol`.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from amago_like.callbacks import Callback
from amago_like.data.dataset import DataFeed
from amago_like.overlap_protocol import (
    INDEX_ENV,
    NEVER,
    SEED_STRIDE,
    OverlapFiles,
    Pace,
    collector_index,
    collector_name,
    read_json,
    report_frames,
    reported_frames,
    write_json,
)
from amago_like.rollout import RolloutStats

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
    overwrite the learner's (nor a spawned one another's); a spawned one keeps its config beside its log."""
    if role != "collect":
        return "metrics.jsonl", "config.gin"
    if not overlap:
        return "metrics_collect.jsonl", "config.gin"
    i, _ = collector_index()
    suffix = "" if i == 0 else f"_{i}"
    return f"metrics_collect{suffix}.jsonl", os.path.join("overlap", f"{collector_name(i)}.gin")


def run_seed(seed: int, role: str, overlap: bool) -> int:
    """The seed a process plays with: a spawned collector i >= 1 its own (the run's + ``i * SEED_STRIDE``)."""
    return seed + SEED_STRIDE * collector_index()[0] if overlap and role == "collect" else seed


def check_overlap(arguments: dict[str, Any]) -> None:
    """ValueError naming the problem and the fix for settings an overlapped run cannot honour, and for the
    overlap settings given to a sequential run (which would do nothing)."""
    ratio, every = arguments["overlap_updates_per_env_step"], arguments["overlap_publish_every"]
    collectors = arguments["overlap_collectors"]
    if isinstance(collectors, bool) or not isinstance(collectors, int) or collectors < 1:
        raise ValueError(f"Experiment.overlap_collectors must be an integer >= 1, got {collectors!r}")
    if not arguments["overlap"]:
        unused = (("overlap_updates_per_env_step", ratio, None), ("overlap_publish_every", every, None),
                  ("overlap_collectors", collectors, 1))  # fmt: skip
        for name, value, default in unused:
            if value != default:
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
    pace = Pace.of(experiment._arguments, experiment.overlap_collectors)
    if experiment.role == "collect":
        experiment._collector = PacedCollector(experiment, pace, *collector_index())
        experiment._collector.guard(int(os.environ[PARENT_ENV]))
    else:
        batches = experiment.train_batches_per_epoch
        every = experiment.overlap_publish_every or max(1, batches // CHUNKS_PER_EPOCH)
        experiment._feed = OverlapFeed(experiment, pace, every)


# ------------------------------------------------------------------ the learner's side
class OverlapFeed(DataFeed):
    """The data an overlapped run's learner sees: each update waits for the env steps :class:`Pace` asks of the
    collectors (and for a dataset to train on), the policy is published every ``publish_every`` updates and after
    an epoch's last, the buffer is re-listed while training (new files) and kept to its FIFO bound, the learner's
    ``total_frames`` follow the collectors' reports, and a collector that died stops the learner."""

    def __init__(self, experiment: Any, pace: Pace, publish_every: int):
        super().__init__(experiment.dataset)
        self.exp, self.pace, self.publish_every = experiment, pace, publish_every
        self.collector_files = [OverlapFiles(experiment.run_dir, i) for i in range(experiment.overlap_collectors)]
        self.files = self.collector_files[0]  # (its learner file is the one every collector reads)
        self.reports = [f.collector for f in self.collector_files]
        self.collectors: list[CollectorProcess] | None = getattr(experiment, "_collector_processes", None)
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
        """The env steps the collectors reported, which become the learner's ``total_frames``; the learner's own
        (idle) training rollout mirrors the collectors' exploration schedule, so that a checkpoint holds it."""
        frames = reported_frames(self.reports)
        if frames is not None and frames > self.exp.total_frames:
            self.exp.total_frames = frames
            rollout = self.exp.train_rollout
            if rollout.explores:  # every collector's parallel_actors step in lockstep
                rollout.explore_steps = frames // (self.exp.parallel_actors * len(self.reports))
        return frames

    def frames(self, frames: int) -> int:
        reported = self.collector_frames()
        return frames if reported is None else max(frames, reported)

    def write_progress(self, done: bool = False, starving: bool = False) -> None:
        """``starving``: the env steps are there but no trajectory has finished yet; the collector then steps on
        regardless of its throttle (the learner cannot update, and only more steps end an episode)."""
        progress = {"updates": self.updates, "policy": self.published, "done": done, "starving": starving}
        write_json(self.files.learner, progress)
        self.starving = starving

    def publish(self) -> None:
        """The policy to ``ckpts/latest/policy.pt``, then its update count to ``learner.json``."""
        start = time.time()
        self.exp.write_latest_policy()
        self.published = self.updates
        self.write_progress()
        self._measured["publish_seconds"] += time.time() - start
        self._measured["publishes"] += 1

    def logs(self) -> str:
        return ", ".join(f.log for f in self.collector_files)

    def check_collectors(self, needed: int, frames: int) -> None:
        if self.collectors is None:
            raise CollectorFailed("Experiment.overlap = True, but no collector was spawned: an overlapped run starts "
                                  "from the command line (amago_like.cli.run spawns it), e.g. examples/toy.py --overlap")  # fmt: skip
        statuses = [c.poll() for c in self.collectors]
        for collector, status in zip(self.collectors, statuses):
            if status not in (None, 0):
                raise CollectorFailed(collector.failure(status))
        if all(s == 0 for s in statuses) and frames < needed:
            raise CollectorFailed(f"the collectors ended after {frames} env steps, but update {self.updates + 1} "
                                  f"needs {needed}; logs: {self.logs()}")  # fmt: skip

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
            self.check_collectors(needed, frames)
            if frames >= needed and (
                time.time() - self._refreshed > REFRESH_SECONDS or not self.dataset.ready_for_training
            ):
                self.dataset.refresh_files()  # the collector's new files
                self._refreshed = time.time()
            if frames >= needed and self.dataset.ready_for_training:
                self._measured["wait_seconds"] += time.time() - start
                if self.starving:  # the throttle is on again now, not after the update (a process's first is slow)
                    self.write_progress()
                return True
            if time.time() - start >= seconds:
                return False
            if say is not None and not self.dataset.ready_for_training:
                say(f"waiting up to {seconds:g} s for the collectors' env steps ({needed} for update {update}) and "
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
                                      f"wait_for_data_seconds) for the collectors' env steps; logs: {self.logs()}")  # fmt: skip
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
    """Spawned collector ``index`` of ``count``: its output goes to ``log``; :meth:`stop` ends it (terminate, then
    kill)."""

    def __init__(self, command: list[str], log: str, index: int = 0, count: int = 1):
        self.command, self.log = command, log
        env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
        env.update({PARENT_ENV: str(os.getpid()), INDEX_ENV: f"{index}/{count}", "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1"})  # fmt: skip
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

    def wait(self, timeout: float) -> int | None:
        """Its exit status, once it ends within ``timeout`` seconds (None if it does not)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

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
def overlapped(experiment: Any, command: list[str] | None = None) -> Iterator[None]:
    """For ``cli.run``, around an overlapped learner's start-up and ``learn()``: its collectors run, spawned
    first so that they start up side by side with it (the learner publishes the policy it trains from before its
    first update; until then each collector acts with its own, as seeded). On the way out the learner says it is
    done and waits for the collectors to stop (a failure raises :class:`CollectorFailed` naming the log); if the
    learner fails, the collectors are ended with it. Other runs: nothing.

    ``command``: the collectors' command line, for a learner not started from a command line that rebuilds the
    same run with ``--mode collect`` appended (default :func:`collector_command`); it must build this run's
    Experiment with ``role="collect"`` and ``overlap=True``."""
    if not (experiment.overlap and experiment.role == "learn"):
        yield
        return
    check_one_process(int(os.environ.get("WORLD_SIZE", 1)))  # before anything is spawned
    count = experiment.overlap_collectors
    files = [OverlapFiles(experiment.run_dir, i) for i in range(count)]
    for stale in (files[0].learner, *(f.collector for f in files)):  # a killed run's: collectors throttle on fresh
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    collectors = experiment._collector_processes = []
    try:
        for i, f in enumerate(files):
            collectors.append(CollectorProcess(command or collector_command(), f.log, i, count))
            if experiment.verbose:
                print(f"overlap: collector pid {collectors[-1].proc.pid}, its log {f.log}")
        yield
        write_json(files[0].learner, {**read_json(files[0].learner), "done": True})
        deadline = time.time() + max(60.0, experiment.wait_for_data_seconds)
        for collector in collectors:
            status = collector.wait(max(0.0, deadline - time.time()))
            if status != 0:
                raise CollectorFailed(collector.failure(status) if status is not None else
                                      f"the collector did not stop after the learner ended; its log: {collector.log}")  # fmt: skip
        if experiment.verbose:  # where the time went: the collectors' CPU (their env steps and acting), and ours
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            own = resource.getrusage(resource.RUSAGE_SELF)
            print(f"overlap: CPU seconds: collectors (and other child processes) {used.ru_utime + used.ru_stime:.1f}, "
                  f"learner {own.ru_utime + own.ru_stime:.1f}")  # fmt: skip
    finally:
        for collector in collectors:
            collector.stop()


# ------------------------------------------------------------------ the collector's side
class PacedCollector(Callback):
    """Spawned collector ``index`` of ``count``: its stepping, in chunks of a tenth of an epoch, each started when
    :class:`Pace` allows (on the env steps of all collectors), with the newest policy the learner published, its
    env steps reported after each; its share of the run's env-step budget or the learner's end stops it (a
    callback ends the epoch loop). Its ``total_frames`` are its own env steps. It exits when its learner is gone,
    also one killed with SIGKILL (a watchdog thread polls the parent pid), and takes SIGTERM as an exit that
    closes the envs."""

    def __init__(self, experiment: Any, pace: Pace, index: int = 0, count: int = 1):
        self.exp, self.pace = experiment, pace
        self.index, self.count = index, count
        self.files = OverlapFiles(experiment.run_dir, index)
        self.others = [OverlapFiles(experiment.run_dir, i).collector for i in range(count) if i != index]
        self.budget = pace.frames // count  # its share: each collector steps as many envs as the others
        self.loaded, self.learner_done, self._settled = -1, False, False
        self._measured = {"throttle_seconds": 0.0, "policy_loads": 0}
        experiment.callbacks.append(self)

    def guard(self, parent: int) -> None:
        """Tie this process to its learner ``parent`` (pid): SIGTERM exits (closing the envs) and a watchdog thread
        exits once the parent is gone. Kept apart from ``__init__`` so that a collector's pacing can be built in a
        process that is not a spawned collector (a test)."""
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        threading.Thread(target=self._watch_parent, args=(parent,), daemon=True, name="overlap-watchdog").start()

    @staticmethod
    def _watch_parent(parent: int) -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        print(f"the learner (pid {parent}) is gone: the collector stops", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # files are written by rename: stopping anywhere loses nothing written

    def _learner(self) -> dict[str, Any]:
        learner = read_json(self.files.learner)
        self.learner_done = bool(learner.get("done", False))
        return learner

    def _may_step(self, frames: int) -> bool:
        """Whether the pace lets the collectors, at ``frames`` env steps of this one, step on now."""
        learner = self._learner()
        if self.learner_done or learner.get("starving"):
            return True
        return self.pace.may_step(frames + (reported_frames(self.others) or 0), learner.get("updates", 0))

    def _throttle(self, frames: int) -> None:
        """Wait until :meth:`_may_step`."""
        start = time.time()
        while not self._may_step(frames):
            time.sleep(POLL_SECONDS)
        self._measured["throttle_seconds"] += time.time() - start

    def _load_newer_policy(self) -> None:
        version = self._learner().get("policy", -1)
        if version > self.loaded and self.exp.read_latest_policy():
            self.loaded = version
            self._measured["policy_loads"] += 1

    def _own_frames_after_resume(self) -> None:
        """A resumed collector loaded the learner's ``total_frames``, the env steps of all collectors: its own are
        its share of them (the collectors step equally, in whole vector steps). Reported at once: until a collector
        reports, the learner and the other collectors count none of its steps while its own throttle counts them all,
        so a resumed collector that waits on the throttle before its first report can leave the learner waiting on
        it (a deadlock seen with two collectors)."""
        num_envs = self.exp.train_rollout.num_envs
        vector_steps = self.exp.total_frames // num_envs
        share = vector_steps // self.count + (self.index < vector_steps % self.count)
        self.exp.total_frames = share * num_envs
        report_frames(self.files.collector, self.exp.total_frames)
        self._settled = True

    def collect(
        self, policy: Any, timesteps: int, sample: bool = True, seed: int | None = None, desc: str = ""
    ) -> RolloutStats:
        """Like ``Rollout.collect`` for the training envs: ``timesteps`` steps per actor, fewer where its budget
        ends, none once the learner is done."""
        if not self._settled:
            self._own_frames_after_resume()
        rollout, base = self.exp.train_rollout, self.exp.total_frames
        steps = min(timesteps, max(0, self.budget - base) // rollout.num_envs)
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
            report_frames(self.files.collector, base + total.frames)
        total.metrics = {f"overlap/{k}": float(v) for k, v in self._measured.items()}
        total.metrics["overlap/policy_updates"] = float(self.loaded)  # the learner's updates behind the policy
        self._measured = dict.fromkeys(self._measured, 0.0)
        return total

    def on_epoch_end(self, experiment: Any, metrics: dict[str, float]) -> bool:
        return self.learner_done or experiment.total_frames >= self.budget
