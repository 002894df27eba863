"""What an overlapped run's learner and collectors share (:mod:`amago_like.overlap` runs them): the replay ratio
(:class:`Pace`), the small files they talk through, and each spawned collector's identity (its index, file names).
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from typing import Any

from amago_like.io import atomic_write_text
from amago_like.learner import planned_updates

NEVER = 2**62  # an epoch that never comes
#: set in a spawned collector's environment: "i/n", collector i of the run's n
INDEX_ENV = "AMAGO_LIKE_OVERLAP_COLLECTOR"
SEED_STRIDE = 7919  # collector i >= 1 plays with the run's seed + i * this (the same seed would replay collector 0)


def collector_index() -> tuple[int, int]:
    """(i, n) of a spawned collector, collector i of n (0, 1 in any other process)."""
    i, _, n = os.environ.get(INDEX_ENV, "0/1").partition("/")
    return int(i), int(n)


def collector_name(i: int) -> str:
    """The stem of collector ``i``'s files: ``collector`` for the first, then ``collector_1``, ..."""
    return "collector" if i == 0 else f"collector_{i}"


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


# ------------------------------------------------------------------ the files the processes share
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
    """Paths in ``{run_dir}/overlap/`` (see the module's description); ``collector`` and ``log`` are collector
    ``index``'s."""

    def __init__(self, run_dir: str, index: int = 0):
        self.folder = os.path.join(run_dir, "overlap")
        os.makedirs(self.folder, exist_ok=True)
        self.learner = os.path.join(self.folder, "learner.json")
        self.collector = os.path.join(self.folder, f"{collector_name(index)}.json")
        self.log = os.path.join(self.folder, f"{collector_name(index)}.log")


def report_frames(path: str, frames: int) -> None:
    """A collector's report of the env steps it has taken (its own share), which :func:`reported_frames` sums."""
    write_json(path, {"frames": frames})


def reported_frames(paths: list[str]) -> int | None:
    """The env steps the collectors reported in ``paths``, summed (None while none has reported)."""
    frames = [read_json(p).get("frames") for p in paths]
    return None if all(f is None for f in frames) else sum(f or 0 for f in frames)
