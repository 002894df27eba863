"""How many threads torch runs its operators on in each process (``Experiment.torch_threads``).

torch starts one intra-op thread per core, and its OpenMP threads spin (busy-wait) for one another at every
operator. That pays on an idle machine with big operators; with this trainer's small ones, and with the
cores shared (env stepping, collectors beside a learner, other jobs), a thread that is not scheduled holds
up all the others at every operator while they spin on the cores the rest of the machine needs, and a run
slows far more than the load alone explains (a learner beside a collector can stall outright). So unless
the user chose (``torch_threads``, or ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the environment):

- a collector (``role="collect"``) runs 1 thread: it acts one small batch at a time;
- a learner (``role="learn"``) and a run that does both take half of the CPUs this process may use,
  divided among the processes of a multi-process (DDP) run on the machine, and at least 1: the other
  half is left to env stepping, collectors and whatever else shares the machine;
- async env workers run 1 thread: the policy does not run there.
"""

from __future__ import annotations

import os
import sys

#: environment variables by which a user sets torch's thread count before it starts
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def user_set_threads() -> bool:
    """Whether the environment sets torch's thread count (which torch then takes at start-up)."""
    return any(os.environ.get(v) for v in THREAD_ENV_VARS)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def automatic_threads(role: str, processes: int = 1, cpus: int | None = None) -> int:
    """The intra-op thread count for ``role`` ("both", "collect", "learn") when the user chose none:
    see the module's description."""
    if role == "collect":
        return 1
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus // (2 * max(1, processes)))


def set_torch_threads(requested: int | None, role: str, processes: int = 1) -> int:
    """Set torch's intra-op threads: ``requested``, or (None) :func:`automatic_threads` unless the environment
    sets them. ``processes``: processes of this run (``LOCAL_WORLD_SIZE``, the launcher's count of them on
    this machine, takes precedence). Returns the count in effect."""
    import torch

    if requested is None and not user_set_threads():
        requested = automatic_threads(role, int(os.environ.get("LOCAL_WORLD_SIZE", processes)))
    if requested is not None and requested != torch.get_num_threads():
        torch.set_num_threads(requested)
    return torch.get_num_threads()


def single_threaded_env_worker() -> None:
    """In an async env worker: 1 torch thread (if torch is loaded there), unless the environment sets them."""
    torch = sys.modules.get("torch")
    if torch is not None and not user_set_threads() and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
