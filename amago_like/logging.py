"""Run logging: always a local metrics.jsonl (+ PNG plots), optionally wandb; progress lines for logs
that are not a terminal."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

_T = TypeVar("_T")

PLOT_PREFIXES = ("train/", "val/", "learn/")


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
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


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
    """``wandb.init(**kwargs)``; its "no API key" failure becomes WandbSetupError, one line that says
    what to do (WANDB_MODE=offline among it)."""
    import wandb

    try:
        return wandb.init(**kwargs)
    except wandb.errors.UsageError as e:
        if "api key" in str(e).lower():
            raise WandbSetupError(WANDB_NO_KEY) from None
        raise


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


def plot_metrics(run_dir: str, x_key: str = "step") -> list[str]:
    """Write one PNG per metric group (split on the first '/') under ``{run_dir}/plots``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in read_metrics(path):
        x = row.get(x_key, row.get("step"))
        for k, v in row.items():
            if k != "step" and k.startswith(PLOT_PREFIXES):
                series[k].append((x, v))
    # "val/reach-v3/Success" -> plot "val/Success", line "reach-v3"; "val/return" -> plot "val/return", line "all"
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for k in sorted(series):
        parts = k.split("/")
        groups[f"{parts[0]}/{parts[-1]}"].append((k, "/".join(parts[1:-1]) or "all"))
    out_dir = os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for group, keys in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, label in keys:
            xs, ys = zip(*series[k])
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
        ax.set_xlabel(x_key)
        ax.set_title(group)
        ax.legend(fontsize=6, ncol=1 + len(keys) // 16)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = os.path.join(out_dir, group.replace("/", "_").replace(" ", "_") + ".png")
        fig.savefig(out, dpi=80)
        plt.close(fig)
        written.append(out)
    return written
