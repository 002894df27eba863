"""Writing files so that a kill or a full disk never leaves a half-written one, and clear storage errors.

Every writer of the package goes through :func:`atomic_write`: the data goes to a hidden temporary file
beside the target (``.{name}.{unique}.tmp``; readers that list folders skip hidden ``.tmp`` names, and
``DiskTrajDataset`` deletes stale ones), is flushed and fsync'd, and is then renamed over the target, so the
target is always the old file or the new one, whole. A failed write removes its temporary file and raises
:class:`DiskFullError` for a full disk, :class:`NotWritableError` for a folder without write permission,
each naming the file and what to do.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from typing import IO, Any

_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class DiskFullError(OSError):
    """A write failed because the disk (or quota) is full."""


class NotWritableError(PermissionError):
    """A folder the run must write to does not accept writes."""


def storage_error(e: OSError, path: str, hint: str) -> OSError:
    """A clearer error for a failed write of ``path``: DiskFullError (with ``hint``: what to delete or
    lower) for a full disk, NotWritableError for a folder without write permission; else ``e`` itself
    (also when it already is one of those two)."""
    if isinstance(e, (DiskFullError, NotWritableError)):
        return e
    if e.errno in _FULL:
        err: OSError = DiskFullError(
            f"disk full: could not write {path} ({e.strerror}). Free space on that disk (or move --buffer_dir "
            f"to a bigger one), {hint}, then continue the run with --resume"
        )
    elif e.errno in _DENIED:
        err = NotWritableError(
            f"cannot write {path} ({e.strerror}). Make {os.path.dirname(path) or '.'} writable by this user "
            "or choose another --buffer_dir"
        )
    else:
        return e
    err.errno = e.errno  # (a filename would replace the message in str(err))
    return err


def temp_path(path: str) -> str:
    """A hidden, unique temporary name beside ``path`` (unique: concurrent writers never share one)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")


def write_synced(path: str, write: Callable[[IO[bytes]], Any], hint: str = "", sync: bool = True) -> None:
    """Create ``path`` (not atomically: for files inside a folder that is renamed into place as a whole)
    with ``write(file)``, flushed to disk unless not ``sync``. Storage errors become DiskFullError /
    NotWritableError."""
    try:
        with open(path, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise storage_error(e, path, hint) from None
    except RuntimeError as e:
        # torch's zip writer fails a second time while closing after a failed write; the OSError is the cause
        if isinstance(e.__context__, OSError):
            raise storage_error(e.__context__, path, hint) from None
        raise


def atomic_write(path: str, write: Callable[[IO[bytes]], Any], hint: str = "", sync: bool = True) -> None:
    """Write ``path`` with ``write(file)`` through a temporary file and a rename: a reader sees the old or the
    new file, never part of one. ``sync=False`` skips flushing it to disk, for small files rewritten many times
    a second that a crash may lose (their writers rewrite them on restart)."""
    tmp = temp_path(path)
    try:
        write_synced(tmp, write, hint, sync)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise storage_error(e, path, hint) from None
        raise


def atomic_write_bytes(path: str, data: bytes, hint: str = "", sync: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), hint, sync)


def atomic_write_text(path: str, text: str, hint: str = "", sync: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), hint, sync)


def read_bytes(path: str) -> bytes | None:
    """The file's contents, or None when there is no such file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def torch_writer(obj: Any) -> Callable[[IO[bytes]], None]:
    """A ``write`` for :func:`atomic_write` that saves ``obj`` with ``torch.save``. (Saving through a Python
    file, not a path: torch's own writer would turn a full disk into a RuntimeError without the errno.)"""
    import torch

    return lambda f: torch.save(obj, f)
