"""Checks shared by constructors and writers: argument types, writable folders, full disks.

Every error names what is wrong (the ``Configurable.parameter`` or the path) and what to do about it.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np

from amago_like.io import DiskFullError, NotWritableError, storage_error  # noqa: F401  (their old home)


class ConfigTypeError(TypeError):
    """An argument (usually a gin binding) of the wrong type."""


def check_int(param: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an int. ConfigTypeError naming ``param`` (e.g. ``"Experiment.epochs"``) if it is not a
    whole number (bools and floats such as 2.0 are refused); ValueError if it is below ``minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        expected = "an integer or None" if allow_none else "an integer"
        raise ConfigTypeError(
            f"{param} must be {expected}, got {value!r} ({type(value).__name__}); "
            "bind it as a whole number without quotes or decimals"
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{param} must be >= {minimum}, got {value}")
    return int(value)


def check_ints(owner: str, minimum: int | None = None, **values: Any) -> None:
    """:func:`check_int` for several arguments of the configurable ``owner`` at once."""
    for name, value in values.items():
        check_int(f"{owner}.{name}", value, minimum)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """ValueError naming ``name`` and listing ``choices`` if ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")


def check_number(param: str, value: Any, minimum: float | None = None) -> float:
    """``value`` as a float. ConfigTypeError naming ``param`` if it is not an int or float (bools refused);
    ValueError if it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigTypeError(
            f"{param} must be a number, got {value!r} ({type(value).__name__}); bind it as a number without quotes"
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{param} must be >= {minimum}, got {value}")
    return float(value)


def check_writable_dir(path: str, what: str) -> None:
    """Raise NotWritableError unless a file can be created in ``path`` (or, while it does not exist yet,
    in its nearest existing parent). Probes by creating and deleting a hidden ``.*.tmp`` file, so it
    works for root and read-only mounts too and never touches the folder's files."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder or (os.path.exists(folder) and not os.path.isdir(folder)):
            raise NotWritableError(
                f"{what} {path} cannot be created: {folder} is not a folder. Choose another --buffer_dir"
            )
        folder = parent
    probe = os.path.join(folder, f".write_probe_{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except OSError as e:
        raise NotWritableError(
            f"{what} {path} is not writable ({e.strerror} in {folder}). Make it writable by this user "
            "(e.g. chmod u+w, or run as the folder's owner) or choose another --buffer_dir"
        ) from None
