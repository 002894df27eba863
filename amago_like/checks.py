"""Checks shared by constructors and writers: argument types, writable folders, full disks.

Every error names what is wrong (the ``Configurable.parameter`` or the path) and what to do about it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import os
import shutil
import sys
import types
import typing
import uuid
from collections.abc import Iterator
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
    if minimum is not None and not value >= minimum:  # (NaN compares False both ways)
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
    ValueError if it is below ``minimum``, or NaN where a minimum is given."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigTypeError(
            f"{param} must be a number, got {value!r} ({type(value).__name__}); bind it as a number without quotes"
        )
    if minimum is not None and not value >= minimum:  # (NaN compares False both ways)
        raise ValueError(f"{param} must be >= {minimum}, got {value}")
    return float(value)


def check_positive(param: str, value: Any) -> float:
    """``value`` as a float above 0 (a scale, a rate). ConfigTypeError naming ``param`` if it is not a number;
    ValueError if it is 0, negative or NaN."""
    number = check_number(param, value)
    if not number > 0:  # (NaN compares False)
        raise ValueError(f"{param} must be > 0, got {value}")
    return number


def _check_in_unit_interval(
    param: str, value: Any, include_zero: bool, include_one: bool, allow_none: bool = False
) -> float | None:
    """``value`` as a float between 0 and 1, each end in or out of the range as asked (or None where
    ``allow_none``). ConfigTypeError naming ``param`` if it is not a number; ValueError naming the range if it is
    outside it."""
    if value is None and allow_none:
        return None
    number = check_number(param, value)
    above_zero = number >= 0.0 if include_zero else number > 0.0
    below_one = number <= 1.0 if include_one else number < 1.0
    if not (above_zero and below_one):
        interval = f"{'[' if include_zero else '('}0, 1{']' if include_one else ')'}"
        raise ValueError(f"{param} must be in {interval}{' or None' if allow_none else ''}, got {value}")
    return float(value)


def check_below_one(param: str, value: Any) -> float:
    """``value`` as a float in [0, 1) (a dropout rate, a correlation)."""
    return _check_in_unit_interval(param, value, include_zero=True, include_one=False)


def check_unit_interval(param: str, value: Any) -> float:
    """``value`` as a float in [0, 1] (a probability, an exploration epsilon)."""
    return _check_in_unit_interval(param, value, include_zero=True, include_one=True)


def check_fraction(param: str, value: Any, allow_none: bool = False) -> float | None:
    """``value`` as a float in (0, 1] (a rate or a limit), or None where ``allow_none``."""
    return _check_in_unit_interval(param, value, include_zero=False, include_one=True, allow_none=allow_none)


def check_open_fraction(param: str, value: Any) -> float:
    """``value`` as a float strictly inside (0, 1) (a radius on the unit circle)."""
    return _check_in_unit_interval(param, value, include_zero=False, include_one=False)


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


# ---------------------------------------------------------------------------------------------
# gin bindings against the signatures of their configurables
# ---------------------------------------------------------------------------------------------

_UNKNOWN = object()  # an annotation this check cannot judge: any value passes


def binding_type_error(configurable: Any, param: str, value: Any) -> str | None:
    """Why ``value`` cannot be the argument ``param`` of the gin-registered ``configurable`` (a class or
    function), judged by the parameter's annotation (else its default's type); None if it can, or if
    the annotation is one this check does not understand. Gin references (``@X``, ``%MACRO``) pass:
    they are only known when called."""
    name = f"{getattr(configurable, '__name__', configurable)}.{param}"
    try:
        fn = configurable.__init__ if isinstance(configurable, type) else configurable
        parameter = inspect.signature(fn).parameters.get(param)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
        return None
    default = None if parameter.default is parameter.empty else parameter.default
    hint = _resolve_annotation(fn, parameter.annotation)
    if hint is _UNKNOWN and isinstance(default, (bool, int, float, str)):
        hint = type(default)
    if hint is _UNKNOWN or _accepts(hint, value):
        return None
    expected = _describe(hint)
    example = f"{name} = {default!r}" if default is not None and _accepts(hint, default) else None
    fix = _how_to_bind(hint)
    return f"{name} must be {expected}, got {value!r} ({type(value).__name__}); {fix}" + (
        f", e.g. {example}" if example else ""
    )


def _resolve_annotation(fn: Any, annotation: Any) -> Any:
    """The annotation as an object (``from __future__ import annotations`` leaves strings), or _UNKNOWN."""
    if annotation is inspect.Parameter.empty:
        return _UNKNOWN
    if not isinstance(annotation, str):
        return annotation
    namespace = dict(vars(sys.modules.get(getattr(fn, "__module__", ""), typing)))
    try:
        return eval(annotation, {"typing": typing, **namespace})  # noqa: S307  (our own source's annotations)
    except Exception:  # noqa: BLE001  (names only imported for type checkers, newer syntax, ...)
        return _UNKNOWN


def _is_gin_reference(value: Any) -> bool:
    import gin

    return isinstance(value, gin.config.ConfigurableReference)  # also %MACRO (a reference to gin.macro)


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits the type ``hint``; True where the check cannot tell."""
    if hint is _UNKNOWN or hint is Any or _is_gin_reference(value):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_accepts(a, v) for a, v in zip(args, value))
        return all(_accepts(args[0], v) for v in value) if args else True
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if origin is type:
        return isinstance(value, type) or not isinstance(value, (bool, int, float, str, tuple, list, dict))
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return callable(value)
    if isinstance(hint, type):
        # a literal number, string or container where an object (a dataset, a space) belongs
        literal = isinstance(value, (bool, int, float, str, tuple, list, dict, type(None)))
        return not literal or isinstance(value, hint)
    return True


def _describe(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a, plural) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or None" if type(None) in args else "")
    names = {bool: ("True or False", "True/False values"), int: ("an integer", "integers")}
    names.update({float: ("a number", "numbers"), str: ("a string", "strings")})
    if hint in names:
        return names[hint][plural]
    if origin in (tuple, list, collections.abc.Sequence):
        kind = "tuple" if origin is tuple else "list"
        items = f" of {_describe(args[0], plural=True)}" if args and args[0] is not Any else ""
        return (f"{kind}s" if plural else f"a {kind}") + items
    if origin is type:
        return f"{'classes' if plural else 'a class'} ({args[0].__name__ if args and isinstance(args[0], type) else 'type'})"
    name = getattr(hint, "__name__", str(hint))
    return f"{name} objects" if plural else f"a {name} object"


def _how_to_bind(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _how_to_bind(inner[0]) + (" (or None)" if type(None) in args else "") if inner else "bind None"
    fixes = {
        bool: "bind True or False without quotes",
        int: "bind a whole number without quotes or decimals",
        float: "bind a number without quotes",
        str: "bind a quoted string",
    }
    if hint in fixes:
        return fixes[hint]
    if origin in (tuple, list, collections.abc.Sequence):
        return "bind a bracketed sequence such as (a, b)"
    if origin is type:
        return "bind a configurable class as @Name (no quotes, no parentheses)"
    return "bind a configurable reference such as @Name() (no quotes)"


@contextlib.contextmanager
def removed_if_left_empty(*paths: str) -> Iterator[None]:
    """On an exception inside the block, remove each of ``paths`` (in order: innermost first) that the
    block created and that holds no files (only empty folders), so a run that failed while starting
    leaves no empty run folder behind. A folder that existed before, or holds any file (a trajectory,
    a checkpoint, metrics), is kept as it is."""
    new = [p for p in paths if not os.path.exists(p)]
    try:
        yield
    except BaseException:
        for path in new:
            if os.path.isdir(path) and not any(files for _, _, files in os.walk(path)):
                shutil.rmtree(path, ignore_errors=True)
        raise
