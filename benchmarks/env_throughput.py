"""Env-steps per second of raw Meta-World against our wrapped path (AMAGOEnv + exploration).

Every mode steps random actions (no policy) for ``--steps`` env-steps in total, after a reset
that is not timed (simulator construction is excluded; the soft/hard resets every 500 steps
are included). In-process modes also time the simulator's own ``step``/``reset``/``set_task``
calls, so the overhead our code adds per env-step is measured directly, not as the difference
of two noisy throughputs. Each mode runs ``--repeats`` times, interleaved; the best run counts.

    python benchmarks/env_throughput.py --steps 6000 --num_envs 2 --task reach-v3 [--profile]

``--per_worker 1,6,12`` adds async rows (exploration and saving on) with that many envs per worker process
(``Experiment.async_envs_per_worker``; 1 is gymnasium's one process per env), e.g. with ``--num_envs 24``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from amago_like.envs.builtin.metaworld import KEpisodeMetaworld, Metaworld, get_benchmark
from amago_like.envs.exploration import EpsilonGreedy, ExplorationWrapper
from amago_like.envs.vector import LeanSyncVectorEnv, find_amago_env, make_vector_env
from amago_like.envs.wrapper import AMAGOEnv

SECONDS: dict[str, float] = {}  # inclusive time per instrumented layer, this process only
_ACTIVE: set[str] = set()


def _timed(fn: Callable, key: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if key in _ACTIVE:  # count only the outermost call of a layer
            return fn(*args, **kwargs)
        _ACTIVE.add(key)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[key] = SECONDS.get(key, 0.0) + time.perf_counter() - t0
            _ACTIVE.discard(key)

    wrapper.__wrapped_original__ = fn
    return wrapper


def instrument(cls: type, methods: tuple[str, ...], key: str) -> None:
    """Add the time of ``cls``'s ``methods`` (as defined or inherited) to ``SECONDS[key]``."""
    for name in methods:
        setattr(cls, name, _timed(getattr(cls, name), key))


def uninstrument(cls: type, methods: tuple[str, ...]) -> None:
    for name in methods:
        setattr(cls, name, getattr(cls, name).__wrapped_original__)


def sim_class(task: str) -> type:
    return get_benchmark(task).train_classes[task]


SIM_METHODS = ("step", "reset", "set_task")


@dataclass
class Mode:
    name: str
    num_envs: int  # 0: one env, no vector env
    vector: str | None = None  # "sync" / "async"
    explore: bool = False
    save: bool = False
    raw: bool = False
    per_worker: int | str = "auto"  # async: envs per worker process


@dataclass
class Result:
    seconds: float
    sim_seconds: float | None
    main_cpu_seconds: float  # CPU time of this (the main) process: what bounds a collector feeding a GPU
    saved: int


def make_wrapped(task: str, explore: bool) -> gym.Env:
    env = Metaworld(task, "train", k_episodes=3)
    return EpsilonGreedy(env, steps_anneal=1_000_000) if explore else env


def run_mode(mode: Mode, task: str, steps: int, seed: int) -> Result:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        save_dir = tmp if mode.save else None
        if mode.raw:
            bench = get_benchmark(task)
            env = bench.train_classes[task]()
            env.set_task(bench.train_tasks[0])
            env.reset()
        elif mode.vector is None:
            env = make_wrapped(task, mode.explore)
            find_amago_env(env).configure_saving(save_dir)
            env.reset(seed=seed)
        else:
            env = make_vector_env(
                functools.partial(make_wrapped, task, mode.explore),
                mode.num_envs,
                mode.vector,
                save_dir,
                envs_per_worker=mode.per_worker if mode.vector == "async" else "auto",
            )
            env.reset(seed=seed)
        single = mode.vector is None  # vector envs reset themselves
        shape = (steps, 4) if single else (steps // mode.num_envs, mode.num_envs, 4)
        actions = rng.uniform(-1, 1, shape).astype(np.float32)
        SECONDS.clear()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if single and (term or trunc):
                env.reset()
        seconds = time.perf_counter() - t0
        main_cpu = time.process_time() - cpu0
        sim = None if mode.vector == "async" else SECONDS.get("sim", 0.0)
        env.close()
        saved = len([f for f in os.listdir(tmp) if not f.startswith(".")])
    return Result(seconds, sim, main_cpu, saved)


def build_modes(num_envs: int, per_worker: list[int]) -> list[Mode]:
    modes = [Mode("raw metaworld", 0, raw=True)]
    for explore in (False, True):
        for save in (False, True):
            modes.append(Mode("wrapped", 0, None, explore, save))
    for vec in ("sync", "async"):
        for explore in (False, True):
            for save in (False, True):
                modes.append(Mode(f"{vec} vector", num_envs, vec, explore, save))
    for k in per_worker:
        modes.append(Mode(f"async {k}/worker", num_envs, "async", True, True, per_worker=k))
    return modes


def profile(task: str, steps: int, num_envs: int) -> str:
    """cProfile of sync-vector stepping with exploration and saving: the top functions by own time."""
    mode = Mode("sync vector", num_envs, "sync", explore=True, save=True)
    prof = cProfile.Profile()
    prof.enable()
    run_mode(mode, task, steps, seed=123)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    return out.getvalue()


LAYERS = (  # outermost first; each layer's own time is its inclusive time minus the next one's
    ("LeanSyncVectorEnv", LeanSyncVectorEnv, ("step",)),  # what make_vector_env(..., "sync") builds
    ("EpsilonGreedy", ExplorationWrapper, ("step", "reset")),
    ("AMAGOEnv", AMAGOEnv, ("step", "reset")),
    ("KEpisodeMetaworld", KEpisodeMetaworld, ("step", "reset")),
)


def breakdown(task: str, steps: int, num_envs: int, repeats: int) -> str:
    """Own time per env-step of every layer in sync-vector stepping with exploration and saving
    (per layer, the least over ``repeats`` runs)."""
    keys = ["loop", *(k for k, _, _ in LAYERS), "sim"]
    own: dict[str, float] = {}
    for key, cls, methods in LAYERS:
        instrument(cls, methods, key)
    try:
        for r in range(repeats):
            res = run_mode(Mode("sync vector", num_envs, "sync", explore=True, save=True), task, steps, seed=321 + r)
            incl = {"loop": res.seconds, **SECONDS}
            for outer, inner in zip(keys, keys[1:] + [None]):
                t = incl.get(outer, 0.0) - (incl.get(inner, 0.0) if inner else 0.0)
                own[outer] = min(own.get(outer, t), t)
    finally:
        for _, cls, methods in LAYERS:
            uninstrument(cls, methods)
    lines = [f"own time per env-step, sync vector x{num_envs}, exploration + saving (timers add ~0.5 us/layer):"]
    for key in keys:
        label = "Meta-World (step/reset/set_task)" if key == "sim" else key
        lines.append(f"  {label:<34}{1e6 * own[key] / steps:8.1f} us")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="env-steps per mode (all envs together)")
    parser.add_argument("--num_envs", type=int, default=2, help="envs in the vector modes")
    parser.add_argument("--task", default="reach-v3", help="Meta-World ML1 task name")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode, interleaved; the fastest counts")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the sync exploration mode")
    parser.add_argument(
        "--per_worker", default="", metavar="K,K,...", help="also async rows with K envs per worker process"
    )
    args = parser.parse_args()
    try:
        per_worker = [int(k) for k in args.per_worker.split(",") if k.strip()]
    except ValueError:
        parser.error(f"--per_worker takes integers separated by commas, got {args.per_worker!r}")
    if any(k < 1 for k in per_worker):
        parser.error("--per_worker values must be >= 1")

    if args.steps < args.num_envs or args.num_envs < 1:
        parser.error("need --num_envs >= 1 and --steps >= --num_envs")
    args.steps -= args.steps % args.num_envs  # whole vector steps, same env-step count in every mode
    instrument(sim_class(args.task), SIM_METHODS, "sim")
    modes = build_modes(args.num_envs, per_worker)
    best: dict[int, Result] = {}
    outside: dict[int, float] = {}  # least time outside Meta-World per mode (in-process modes)
    for r in range(args.repeats):
        for i, mode in enumerate(modes):
            res = run_mode(mode, args.task, args.steps, seed=r)
            if i not in best or res.seconds < best[i].seconds:
                best[i] = res
            if res.sim_seconds is not None:
                outside[i] = min(outside.get(i, np.inf), res.seconds - res.sim_seconds)

    raw = best[0]
    raw_us = 1e6 * raw.seconds / args.steps
    raw_sim_us = 1e6 * raw.sim_seconds / args.steps
    raw_loop_us = 1e6 * outside[0] / args.steps
    print(f"task {args.task}, {args.steps} env-steps per mode, best of {args.repeats}, random actions")
    print(f"raw simulator: {raw_us:.0f} us/step ({raw_sim_us:.0f} us in Meta-World step/reset)\n")
    header = f"{'mode':<17}{'envs':>5}{'explore':>9}{'save':>6}{'steps/s':>9}{'x raw':>7}"
    header += f"{'us/step':>9}{'sim us':>8}{'ours us':>9}{'% of raw':>9}{'main CPU us':>12}{'files':>7}"
    print(header)
    print("-" * len(header))
    for i, mode in enumerate(modes):
        res = best[i]
        us = 1e6 * res.seconds / args.steps
        row = f"{mode.name:<17}{max(mode.num_envs, 1):>5}{'eps' if mode.explore else '-':>9}"
        row += f"{'on' if mode.save else 'off':>6}{args.steps / res.seconds:>9.0f}{raw.seconds / res.seconds:>7.2f}{us:>9.0f}"
        if res.sim_seconds is None:
            row += f"{'-':>8}{'-':>9}{'-':>9}"
        else:
            sim_us = 1e6 * res.sim_seconds / args.steps
            ours = 1e6 * outside[i] / args.steps - (0.0 if mode.raw else raw_loop_us)  # beyond the bare loop
            row += f"{sim_us:>8.0f}{ours:>9.1f}"
            row += f"{'' if mode.raw else f'{100 * ours / raw_sim_us:.1f}%':>9}"
        print(row + f"{1e6 * res.main_cpu_seconds / args.steps:>12.1f}{res.saved:>7}")
    print(
        "\n'ours us': least time per env-step outside Meta-World over the repeats (raw row: the bare loop;"
        "\n           other rows: beyond the bare loop). Other columns come from the fastest run."
        "\n'% of raw': that overhead as a share of the raw simulator step time (target < 10% in sync mode)."
        "\nAsync rows cannot split simulator time (it runs in the workers); their 'x raw' uses both cores."
        "\n'main CPU us': CPU time of the main process per env-step (async: its share of the work, which bounds"
        "\n           how many env steps one collector process can feed however many cores step the envs)."
    )
    print("\n" + breakdown(args.task, args.steps, args.num_envs, args.repeats))
    if args.profile:
        print("\n" + profile(args.task, args.steps, args.num_envs))


if __name__ == "__main__":
    main()
