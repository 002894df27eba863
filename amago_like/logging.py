"""Run logging: always a local metrics.jsonl (drawn by :mod:`amago_like.plots`), optionally wandb; progress lines
for logs that are not a terminal; an experiment's log rows, epoch lines and start-up summary
(:class:`ExperimentLogging`)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

_T = TypeVar("_T")


class RunLogger:
    """Appends one JSON line per ``log`` call to ``{run_dir}/{filename}`` and mirrors it to wandb."""

    def __init__(self, run_dir: str, wandb_run=None, filename: str = "metrics.jsonl"):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, filename)
        self.wandb_run = wandb_run

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.wandb_run is not None:  # its x axis is the row's total_frames (init_wandb), not wandb's own step
            self.wandb_run.log(clean)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


class ExperimentLogging:
    """The logging methods of :class:`~amago_like.experiment.Experiment`, which inherits them: one metrics row per
    :meth:`log` (at step ``grad_updates``), the line printed after each epoch, the start-up summary. They use its
    ``logger``, counters, ``policy`` and settings."""

    def _epoch_line(self, m: dict[str, float]) -> str:
        shown = [f"epoch {self.epoch}/{self.epochs}", f"frames {self.total_frames}", f"updates {self.grad_updates}"]
        for k in ("train/return", "val/return", "val/Success", "learn/critic_loss", "epoch_seconds"):
            if k in m:
                shown.append(f"{k} {m[k]:.3g}")
        return " | ".join(shown)

    def wall_seconds(self) -> float:
        """Seconds since the run was built, summed over the runs a resume continued."""
        return time.monotonic() - self._clock_origin

    def x_axis_metrics(self) -> dict[str, float]:
        """What every row is measured against: ``epoch``, ``total_frames`` (environment steps collected by every
        actor of every process), ``grad_updates`` (optimizer steps) and ``wall_seconds``."""
        return {"epoch": self.epoch, "total_frames": self.total_frames, "grad_updates": self.grad_updates,
                "wall_seconds": self.wall_seconds()}  # fmt: skip

    def log(self, metrics: dict[str, float], epoch: int | None = None) -> None:
        """One row of metrics (step ``grad_updates`` in metrics.jsonl, ``total_frames`` in wandb); ``epoch``
        numbers a row logged during an epoch."""
        if self.is_main and metrics:
            x = self.x_axis_metrics() | ({} if epoch is None else {"epoch": epoch})
            self.logger.log({**metrics, **x}, step=self.grad_updates)

    def summary(self) -> str:
        """The start-up description of the run: model size, envs, dataset, devices, schedule."""
        import torch  # loaded by the experiment already; this module needs it nowhere else

        sizes, p = self.policy_metrics(), self.policy
        workers = len(getattr(self.train_envs, "processes", ()))  # async envs: their worker processes
        layout = f" in {workers} worker process(es)" if workers else ""
        return "\n".join(
            [
                f"== amago_like run '{self.run_name}' -> {self.run_dir}",
                f"agent: {type(p).__name__} {sizes['params/total'] / 1e6:.2f}M trainable parameters, "
                f"trunk {sizes['params/traj_encoder'] / 1e6:.2f}M, tstep encoder {sizes['params/tstep_encoder'] / 1e6:.2f}M",
                f"  {type(p.tstep_encoder).__name__} -> {type(p.traj_encoder).__name__}, max_seq_len {self.max_seq_len}",
                f"envs: {self.parallel_actors} x {self.env_mode}{layout}, obs {dict(self.obs_space.spaces)}, actions {self.action_space}",
                f"dataset: {self.dataset.get_description()}",
                f"devices: {self.accelerator.num_processes} process(es) on {self.DEVICE}, mixed precision {self.mixed_precision}, {torch.get_num_threads()} torch thread(s)",
                f"schedule: {self.epochs} epochs x ({self.train_timesteps_per_epoch} steps/actor, {self.train_batches_per_epoch} batches of {self.batch_size} x {self.max_seq_len})",
            ]
        )

    def policy_metrics(self) -> dict[str, float]:
        """Size of the policy, for the summary and the logs."""
        policy = self.policy
        return {
            "params/total": sum(p.numel() for p in policy.parameters() if p.requires_grad),
            "params/traj_encoder": sum(p.numel() for p in policy.traj_encoder.parameters()),
            "params/tstep_encoder": sum(p.numel() for p in policy.tstep_encoder.parameters()),
        }


class WandbSetupError(RuntimeError):
    """wandb cannot start as configured (online, without an API key)."""


WANDB_NO_KEY = (
    "wandb has no API key on this machine: run `wandb login` (or set WANDB_API_KEY), or set "
    "WANDB_MODE=offline to log locally without a key (upload later with `wandb sync`), or drop --log_to_wandb"
)


def wandb_key_problem(environ: dict[str, str] | None = None) -> str | None:
    """WANDB_NO_KEY if wandb would start online without an API key, else None. Reads the environment
    and the netrc file (where `wandb login` stores the key) without importing wandb."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or env.get("WANDB_DISABLED"):
        return None
    if env.get("WANDB_API_KEY"):
        return None
    import netrc
    from urllib.parse import urlparse

    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = env.get("NETRC") or os.path.join(env.get("HOME", os.path.expanduser("~")), ".netrc")
    try:
        if netrc.netrc(path).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return WANDB_NO_KEY


def init_wandb(**kwargs: Any) -> Any:
    """``wandb.init(**kwargs)`` with environment steps (``total_frames``) as every chart's x axis; its "no API
    key" failure becomes WandbSetupError, one line that says what to do (WANDB_MODE=offline among it)."""
    import wandb

    try:
        run = wandb.init(**kwargs)
    except wandb.errors.UsageError as e:
        if "api key" in str(e).lower():
            raise WandbSetupError(WANDB_NO_KEY) from None
        raise
    run.define_metric("total_frames")
    run.define_metric("*", step_metric="total_frames")
    return run


# ---------------------------------------------------------------------------------------------
# progress lines when there are no progress bars
# ---------------------------------------------------------------------------------------------


class ProgressReporter:
    """Prints a progress line (phase, done / total, rate, ETA) at most every ``interval_s`` seconds
    while loops run through :meth:`track`, for output that is not a terminal (batch jobs, CI logs,
    ``| tee``), where progress bars are hidden. One reporter serves every phase of a run, so a run of
    short phases prints no more often than a long one. A phase that printed a line also prints one
    when it ends; one shorter than the interval prints nothing."""

    def __init__(
        self, interval_s: float = 20.0, stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.interval_s, self.stream, self.clock = interval_s, stream, clock
        self._last_line: float | None = None  # when the last line was printed (None: not yet)

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stdout
        print(line, file=stream, flush=True)

    def track(self, iterable: Iterable[_T], desc: str, total: int | None = None, unit: str = "steps") -> Iterator[_T]:
        """Yield the items of ``iterable``, printing a progress line when ``interval_s`` has passed."""
        if total is None:
            total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        start = self.clock()
        if self._last_line is None:
            self._last_line = start
        done, printed = 0, False
        for item in iterable:
            yield item
            done += 1
            now = self.clock()
            if now - self._last_line >= self.interval_s:
                self._print(self._line(desc, done, total, unit, now - start))
                self._last_line, printed = now, True
        if printed:
            elapsed = self.clock() - start
            self._print(f"{desc}: {done} {unit} done in {_duration(elapsed)} ({_rate(done, elapsed, unit)})")

    @staticmethod
    def _line(desc: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
        parts = [f"{desc}: {done}/{total} {unit} ({100 * done / total:.0f}%)" if total else f"{desc}: {done} {unit}"]
        parts.append(_rate(done, elapsed, unit))
        if total and done:
            parts.append(f"ETA {_duration(elapsed / done * (total - done))}")
        parts.append(f"{_duration(elapsed)} so far")
        return ", ".join(parts)


def _rate(done: int, elapsed: float, unit: str) -> str:
    per_s = done / elapsed if elapsed > 0 else float("inf")
    return f"{per_s:.3g} {unit}/s" if per_s >= 1 or per_s == 0 else f"{1 / per_s:.3g} s each"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def bars_wanted(stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> bool:
    """Progress bars only when both stdout and stderr are terminals: bars go to stderr, and a log
    capturing stdout (a batch job, ``| tee``) would otherwise get nothing while an epoch runs."""

    def tty(f: IO[str] | None) -> bool:
        try:
            return bool(f is not None and f.isatty())
        except (AttributeError, ValueError):  # closed or replaced streams
            return False

    return tty(stdout or sys.stdout) and tty(stderr or sys.stderr)


_REPORTER = ProgressReporter()


def progress(
    iterable: Iterable[_T],
    desc: str,
    disable: bool | None = None,
    total: int | None = None,
    unit: str = "steps",
    reporter: ProgressReporter | None = None,
) -> Iterable[_T]:
    """A drop-in for ``tqdm(iterable, desc=desc, disable=disable, leave=False)``: a bar on a terminal,
    progress lines every 20 s (``reporter``, default one shared by the process) otherwise; nothing at
    ``disable=True`` (quiet runs, non-main processes)."""
    if disable:
        return iterable
    if bars_wanted():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=f" {unit}", leave=False)
    return (reporter or _REPORTER).track(iterable, desc, total, unit)


def timed(phase: Callable[[], dict[str, float]], key: str) -> dict[str, float]:
    """The metrics ``phase()`` returns, with the wall seconds it took under ``key`` (an epoch row's
    ``collect_seconds`` and ``learn_seconds``: which of the two sets an epoch's length)."""
    start = time.perf_counter()
    metrics = phase()
    return metrics | {key: time.perf_counter() - start}


def read_metrics(path: str) -> list[dict[str, float]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
    return rows
