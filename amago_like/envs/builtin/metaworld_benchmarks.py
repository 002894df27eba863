"""Meta-World benchmarks: their names (``"ml10"``, ``"ml45"`` or an ML1 task such as ``"reach-v3"``), building
them, and the on-disk cache of built ones.

Benchmark objects are expensive to build (they instantiate every task class and
sample 50 goals per class).  :func:`get_benchmark` builds each
``(benchmark, seed)`` once per process and, for a fixed seed, also keeps a
pickled copy on disk so that later processes start in milliseconds.  The disk
cache lives in ``$AMAGO_LIKE_CACHE`` (default ``~/.cache/amago_like``); set
``AMAGO_LIKE_CACHE=off`` (or ``0``/``none``/``false``/empty) to disable it.

Meta-World itself is imported lazily, on first use.
"""

from __future__ import annotations

import os
import pickle
import threading
import warnings
from pathlib import Path
from typing import Any

from amago_like.io import atomic_write

#: Multi-task meta-RL benchmarks accepted besides single ML1 task names.
ML_BENCHMARKS: tuple[str, ...] = ("ml10", "ml45")

_CACHE_ENV_VAR = "AMAGO_LIKE_CACHE"
_CACHE_OFF_VALUES = {"", "0", "off", "none", "false", "no"}

_BENCHMARKS: dict[tuple[str, int | None], Any] = {}
_BENCHMARKS_LOCK = threading.Lock()


# --------------------------------------------------------------------------- #
# Benchmark names and construction
# --------------------------------------------------------------------------- #


def ml1_task_names() -> list[str]:
    """All Meta-World v3 task names usable as an ML1 benchmark (50 of them)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(ALL_V3_ENVIRONMENTS)


def normalize_benchmark_name(benchmark: str) -> str:
    """Lower-case and validate a benchmark name; raise ``ValueError`` if unknown."""
    if not isinstance(benchmark, str):
        raise ValueError(f"Meta-World benchmark must be a string, got {benchmark!r} ({type(benchmark).__name__})")
    name = benchmark.strip().lower()
    if name in ML_BENCHMARKS:
        return name
    ml1_names = ml1_task_names()
    if name in ml1_names:
        return name
    valid = f"valid names are {', '.join(repr(b) for b in ML_BENCHMARKS)} or one ML1 task name: {', '.join(ml1_names)}"
    hint = ""
    if name.endswith("-v2") and name[:-3] + "-v3" in ml1_names:
        hint = f" Meta-World 3.x only ships v3 tasks: use {name[:-3] + '-v3'!r} instead of {benchmark!r}."
    elif name + "-v3" in ml1_names:
        hint = f" Did you mean {name + '-v3'!r}?"
    elif name in ("ml25", "mt1", "mt10", "mt25", "mt50"):
        hint = f" {benchmark!r} is a Meta-World benchmark but is not supported here."
    raise ValueError(f"Unknown Meta-World benchmark {benchmark!r}.{hint} {valid}")


def _disk_cache_dir() -> Path | None:
    value = os.environ.get(_CACHE_ENV_VAR)
    if value is None:
        return Path.home() / ".cache" / "amago_like"
    if value.strip().lower() in _CACHE_OFF_VALUES:
        return None
    return Path(value).expanduser()


def _disk_cache_path(name: str, seed: int) -> Path | None:
    root = _disk_cache_dir()
    if root is None:
        return None
    from importlib.metadata import version

    return root / f"metaworld-{version('metaworld')}" / f"{name}-seed{seed}.pkl"


def _expected_classes(name: str) -> tuple[list[str], list[str]]:
    import metaworld.env_dict as env_dict

    if name == "ml10":
        d = env_dict.ML10_V3
    elif name == "ml45":
        d = env_dict.ML45_V3
    else:
        return [name], [name]
    return list(d["train"]), list(d["test"])


def _looks_valid(bench: Any, name: str) -> bool:
    import metaworld

    if not isinstance(bench, metaworld.Benchmark):
        return False
    train, test = _expected_classes(name)
    return (
        list(bench.train_classes) == train
        and list(bench.test_classes) == test
        and len(bench.train_tasks) > 0
        and len(bench.test_tasks) > 0
        and {t.env_name for t in bench.train_tasks} == set(train)
        and {t.env_name for t in bench.test_tasks} == set(test)
    )


def _load_from_disk(path: Path, name: str) -> Any | None:
    try:
        with open(path, "rb") as f:
            bench = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # corrupt / incompatible file: rebuild it
        warnings.warn(f"Ignoring unreadable Meta-World cache file {path}: {e!r}", stacklevel=3)
        return None
    if not _looks_valid(bench, name):
        warnings.warn(f"Ignoring Meta-World cache file {path}: unexpected contents", stacklevel=3)
        return None
    return bench


def _save_to_disk(path: Path, bench: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: concurrent writers never see half a file
        atomic_write(str(path), lambda f: pickle.dump(bench, f, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as e:
        warnings.warn(f"Could not write Meta-World cache file {path}: {e!r}", stacklevel=3)


def _build(name: str, seed: int | None) -> Any:
    import metaworld

    if name == "ml10":
        return metaworld.ML10(seed=seed)
    if name == "ml45":
        return metaworld.ML45(seed=seed)
    return metaworld.ML1(name, seed=seed)


def get_benchmark(benchmark: str, seed: int | None = 0) -> Any:
    """Return the Meta-World benchmark object for ``benchmark`` (built once per process).

    ``benchmark`` is ``"ml10"``, ``"ml45"`` or an ML1 task name (case-insensitive).
    ``seed`` fixes the goal positions Meta-World samples for the tasks; with
    ``seed=None`` every process gets different goals and nothing is cached on disk.
    """
    name = normalize_benchmark_name(benchmark)
    key = (name, seed)
    with _BENCHMARKS_LOCK:
        bench = _BENCHMARKS.get(key)
        if bench is not None:
            return bench
        path = _disk_cache_path(name, seed) if seed is not None else None
        if path is not None:
            bench = _load_from_disk(path, name)
        if bench is None:
            bench = _build(name, seed)
            if path is not None:
                _save_to_disk(path, bench)
        _BENCHMARKS[key] = bench
        return bench
