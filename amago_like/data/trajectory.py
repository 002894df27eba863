"""Trajectory records and their file formats.

A trajectory of T transitions holds T+1 timesteps. Timestep t carries the observation
``obs[k][t]``, the previous action and reward ``rl2s[t] = [r_{t-1}, a_{t-1}]`` (zeros at t=0)
and the time index within the meta-episode. Transition t (``actions[t]``, ``rews[t]``,
``dones[t]``) leads from timestep t to t+1.
"""

from __future__ import annotations

import ast
import math
import os
import pickle
import struct
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from amago_like.checks import check_choice
from amago_like.io import atomic_write

FORMATS = ("npz", "npz-compressed", "traj")
_SUFFIX = {"npz": ".npz", "npz-compressed": ".npz", "traj": ".traj"}
_OBS_PREFIX = "obs/"


class TrajectoryFileError(Exception):
    """A trajectory file that cannot be read (truncated, foreign or inconsistent)."""


@dataclass
class Trajectory:
    obs: dict[str, np.ndarray]  # each (T+1, *shape)
    rl2s: np.ndarray  # (T+1, 1+A) float32: [prev reward, prev action]
    time_idxs: np.ndarray  # (T+1, 1) int64
    actions: np.ndarray  # (T, A) float32 (one-hot for discrete actions)
    rews: np.ndarray  # (T, 1) float32
    dones: np.ndarray  # (T, 1) bool: terminated (no bootstrapping past it)

    def __len__(self) -> int:
        """Number of timesteps (T+1)."""
        return len(self.time_idxs)

    def validate(self) -> None:
        """Raise TrajectoryFileError if the arrays disagree in length or shape."""
        if not self.obs:
            raise TrajectoryFileError("no observation arrays")
        arrays = {**{f"obs[{k!r}]": v for k, v in self.obs.items()}, "rl2s": self.rl2s, "time_idxs": self.time_idxs}
        arrays.update(actions=self.actions, rews=self.rews, dones=self.dones)
        for name, v in arrays.items():
            if not isinstance(v, np.ndarray) or v.ndim < 1:
                raise TrajectoryFileError(f"{name} is not an array with a time axis")
        n = len(self.time_idxs)
        if n < 1:
            raise TrajectoryFileError("trajectory has no timesteps")
        for k, v in self.obs.items():
            if len(v) != n:
                raise TrajectoryFileError(f"obs[{k!r}] has {len(v)} timesteps, expected {n}")
        if len(self.rl2s) != n:
            raise TrajectoryFileError(f"rl2s has {len(self.rl2s)} timesteps, expected {n}")
        for name in ("actions", "rews", "dones"):
            if len(getattr(self, name)) != n - 1:
                raise TrajectoryFileError(f"{name} has {len(getattr(self, name))} rows, expected {n - 1}")
        if self.rl2s.ndim != 2 or self.actions.ndim != 2 or self.rl2s.shape[1] != 1 + self.actions.shape[1]:
            raise TrajectoryFileError(f"rl2s shape {self.rl2s.shape} does not match actions shape {self.actions.shape}")

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(v.nbytes for v in self.obs.values()) + sum(
            a.nbytes for a in (self.rl2s, self.time_idxs, self.actions, self.rews, self.dones)
        )

    def window(self, start: int, end: int) -> Trajectory:
        """Timesteps [start, end) and the transitions between them, as views (no copy)."""
        return Trajectory(
            obs={k: v[start:end] for k, v in self.obs.items()},
            rl2s=self.rl2s[start:end],
            time_idxs=self.time_idxs[start:end],
            actions=self.actions[start : end - 1],
            rews=self.rews[start : end - 1],
            dones=self.dones[start : end - 1],
        )

    def copy(self) -> Trajectory:
        """A copy with its own writable arrays."""
        return Trajectory(
            obs={k: v.copy() for k, v in self.obs.items()},
            rl2s=self.rl2s.copy(),
            time_idxs=self.time_idxs.copy(),
            actions=self.actions.copy(),
            rews=self.rews.copy(),
            dones=self.dones.copy(),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {_OBS_PREFIX + k: v for k, v in self.obs.items()}
        arrays.update(rl2s=self.rl2s, time_idxs=self.time_idxs, actions=self.actions, rews=self.rews, dones=self.dones)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Trajectory:
        obs = {k[len(_OBS_PREFIX) :]: v for k, v in arrays.items() if k.startswith(_OBS_PREFIX)}
        try:
            traj = cls(
                obs=obs,
                rl2s=arrays["rl2s"],
                time_idxs=arrays["time_idxs"],
                actions=arrays["actions"],
                rews=arrays["rews"],
                dones=arrays["dones"],
            )
        except KeyError as e:
            raise TrajectoryFileError(f"missing array {e}") from None
        if not obs:
            raise TrajectoryFileError("no observation arrays")
        return traj


def traj_filename(env_name: str, fmt: str) -> str:
    """A unique file name; the leading timestamp makes lexical order = age order."""
    check_choice("trajectory format", fmt, FORMATS)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in env_name)
    return f"{time.time_ns():020d}_{safe}_{uuid.uuid4().hex[:8]}{_SUFFIX[fmt]}"


def save_trajectory(traj: Trajectory, directory: str, env_name: str, fmt: str = "npz") -> str:
    """Write ``traj`` atomically under a new unique name in ``directory``; returns the final path.

    A failed write leaves no file behind, partial or temporary. A full disk raises DiskFullError and a
    folder without write permission NotWritableError, each naming the file and what to do.
    """
    final = os.path.join(directory, traj_filename(env_name, fmt))
    write_trajectory(traj, final, fmt)
    return final


def write_trajectory(traj: Trajectory, path: str, fmt: str = "npz") -> None:
    """Write ``traj`` to ``path`` atomically (temporary name, then rename), replacing any file there."""
    check_choice("trajectory format", fmt, FORMATS)

    def write(f) -> None:
        if fmt == "traj":
            pickle.dump(traj, f, protocol=pickle.HIGHEST_PROTOCOL)
        elif fmt == "npz-compressed":
            np.savez_compressed(f, **traj.to_arrays())
        else:
            np.savez(f, **traj.to_arrays())

    # the temporary name is hidden and has no data suffix, so readers listing the folder never pick it up
    atomic_write(path, write, _BUFFER_HINT)


_BUFFER_HINT = "lower DiskTrajDataset.dset_max_size so the buffer keeps fewer trajectory files"


# zip records as np.savez writes them (uncompressed members, no zip comment)
# end of central directory: signature, 2 disk numbers, 2 entry counts, directory size and offset, comment length
_EOCD = struct.Struct("<4s4H2LH")
_CDIR = struct.Struct("<4s6H3L5H2L")  # central directory entry, fixed part (46 bytes)
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, fixed part (30 bytes)
_NPY_MAGIC = b"\x93NUMPY"
# .npy header text -> (dtype, shape), or None when the header is not a plain C-ordered array
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...]] | None] = {}


def _npy_header(text: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    """(dtype, shape) of a C-ordered, non-object .npy header; None for anything else. Cached: a buffer's
    files share a handful of distinct headers, and parsing one costs more than reading the array."""
    if text not in _npy_headers:
        parsed = None
        try:
            d = ast.literal_eval(text.decode("latin1"))
            if isinstance(d, dict) and d.keys() == {"descr", "fortran_order", "shape"} and d["fortran_order"] is False:
                dtype, shape = np.lib.format.descr_to_dtype(d["descr"]), d["shape"]
                if not dtype.hasobject and isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape):
                    parsed = (dtype, shape)
        except Exception:  # noqa: BLE001 - anything odd goes to numpy's own reader
            parsed = None
        if len(_npy_headers) < 1024:
            _npy_headers[text] = parsed
        return parsed
    return _npy_headers[text]


def _read_stored_npz(f: BinaryIO) -> dict[str, np.ndarray] | None:
    """The arrays of an uncompressed .npz laid out as ``np.savez`` writes it, read with one read,
    CRC-checked, as views into one writable buffer. None if the file is laid out in any other
    way (or is damaged): numpy's reader then decides, with its own errors."""
    read = _read_stored_npz_members(f)
    return None if read is None else _member_arrays(*read)


def _member_arrays(raw: bytearray, members: dict[str, tuple[int, np.dtype, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Views into ``raw`` of the members that ``_parse_stored_npz`` found."""
    return {k: np.frombuffer(raw, dt, math.prod(shape), off).reshape(shape) for k, (off, dt, shape) in members.items()}


def _read_stored_npz_members(f: BinaryIO) -> tuple[bytearray, dict[str, tuple[int, np.dtype, tuple[int, ...]]]] | None:
    """(the whole file, {array name: (data offset, dtype, shape)}) for ``_read_stored_npz``."""
    raw = bytearray(os.fstat(f.fileno()).st_size)
    if f.readinto(raw) != len(raw) or len(raw) < _EOCD.size:
        return None
    try:
        members = _parse_stored_npz(raw)
    except (struct.error, ValueError, IndexError, OverflowError):
        return None
    return None if members is None else (raw, members)


def _parse_stored_npz(raw: bytearray) -> dict[str, tuple[int, np.dtype, tuple[int, ...]]] | None:
    """{array name: (data offset, dtype, shape)} of every member, each CRC-checked; None if not np.savez's layout."""
    sig, _, _, _, entries, cd_size, cd_off, comment = _EOCD.unpack_from(raw, len(raw) - _EOCD.size)
    if sig != b"PK\x05\x06" or comment or cd_off + cd_size != len(raw) - _EOCD.size:
        return None
    members, pos = {}, cd_off
    for _ in range(entries):
        if pos + _CDIR.size > len(raw):
            return None
        sig, _, _, _, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, _, offset = _CDIR.unpack_from(raw, pos)
        name = bytes(raw[pos + _CDIR.size : pos + _CDIR.size + nlen])
        pos += _CDIR.size + nlen + xlen + clen
        if sig != b"PK\x01\x02" or method != 0 or csize != usize or not name.endswith(b".npy"):
            return None
        if offset + _LOCAL.size > cd_off:
            return None
        local = _LOCAL.unpack_from(raw, offset)
        start = offset + _LOCAL.size + local[9] + local[10]
        end = start + usize
        if local[0] != b"PK\x03\x04" or end > cd_off or zlib.crc32(memoryview(raw)[start:end]) != crc:
            return None
        # .npy: magic, version (1: 2-byte header length; 2, 3: 4-byte), header text, data
        major = raw[start + 6] if end - start > 8 else 0
        if raw[start : start + 6] != _NPY_MAGIC or major not in (1, 2, 3):
            return None
        hlen_size = 2 if major == 1 else 4
        hstart = start + 8 + hlen_size
        hlen = int.from_bytes(raw[start + 8 : hstart], "little")
        parsed = _npy_header(bytes(raw[hstart : hstart + hlen]))
        if parsed is None:
            return None
        dtype, shape = parsed
        if hstart + hlen + math.prod(shape) * dtype.itemsize != end:
            return None
        members[name[:-4].decode("utf-8", "replace")] = (hstart + hlen, dtype, shape)
    return members if pos == cd_off + cd_size else None


# ---------------------------------------------------------------------------------------------
# reading windows of rows straight from uncompressed .npz files
# ---------------------------------------------------------------------------------------------

_TRANSITION_ARRAYS = ("actions", "rews", "dones")  # T rows; every other array has T+1
# (array name, dtype, row shape, bytes per row, transition array?) per array, shared by files of one shape
_Schema = tuple[tuple[str, np.dtype, tuple[int, ...], int, bool], ...]
_schemas: dict[_Schema, _Schema] = {}


@dataclass(frozen=True)
class NpzLayout:
    """Where the arrays of one uncompressed ``np.savez`` trajectory file lie: enough to read any
    window of rows without reading the rest. Only valid for the file it was taken from (trajectory
    files are never changed once written)."""

    n: int  # timesteps (T+1)
    schema: _Schema
    offsets: tuple[int, ...]  # file offset of each array's first row


def _layout(traj: Trajectory, members: dict[str, tuple[int, np.dtype, tuple[int, ...]]]) -> NpzLayout:
    """The layout of a file whose (validated) arrays ``traj`` holds, from its members' offsets."""
    schema, offsets = [], []
    for name in traj.to_arrays():  # only the arrays a Trajectory uses, in a fixed order
        offset, dtype, shape = members[name]
        schema.append((name, dtype, shape[1:], dtype.itemsize * math.prod(shape[1:]), name in _TRANSITION_ARRAYS))
        offsets.append(offset)
    key = tuple(schema)
    if len(_schemas) < 1024:
        key = _schemas.setdefault(key, key)
    return NpzLayout(len(traj), key, tuple(offsets))


def load_trajectory_and_layout(path: str) -> tuple[Trajectory, NpzLayout | None]:
    """``load_trajectory``, plus the file's NpzLayout when it is an uncompressed npz laid out as
    ``np.savez`` writes it (None for other files). Same errors as ``load_trajectory``."""
    members = None
    try:
        with open(path, "rb") as f:
            if path.endswith(".traj"):
                traj = pickle.load(f)
                if not isinstance(traj, Trajectory):
                    raise TrajectoryFileError(f"holds a {type(traj).__name__}, not a Trajectory")
            elif path.endswith(".npz") and (read := _read_stored_npz_members(f)) is not None:
                raw, members = read  # the fast path for np.savez's layout
                traj = Trajectory.from_arrays(_member_arrays(raw, members))
            elif path.endswith(".npz"):
                f.seek(0)
                data = np.load(f, allow_pickle=False)
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise TrajectoryFileError("not an npz archive")
                with data:
                    traj = Trajectory.from_arrays({k: data[k] for k in data.files})
            else:
                raise TrajectoryFileError("unknown file suffix (expected .npz or .traj)")
        traj.validate()
        return traj, None if members is None else _layout(traj, members)
    except FileNotFoundError:
        raise
    except TrajectoryFileError as e:
        raise TrajectoryFileError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt file can make numpy, zipfile or pickle raise almost anything
        raise TrajectoryFileError(f"{path}: unreadable trajectory file ({type(e).__name__}: {e})") from None


def count_transitions(path: str) -> int:
    """The transitions (T) in a trajectory file, reading as little of it as its format allows: the header of
    the ``actions`` array of an .npz file, the whole of a .traj file. Same errors as ``load_trajectory``."""
    if not path.endswith(".npz"):
        return len(load_trajectory(path).actions)
    try:
        with zipfile.ZipFile(path) as archive, archive.open("actions.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape = read_header(f)[0]
        return int(shape[0])
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - as load_trajectory_and_layout: a damaged file can raise almost anything
        raise TrajectoryFileError(f"{path}: unreadable trajectory file ({type(e).__name__}: {e})") from None


def load_trajectory(path: str) -> Trajectory:
    """Read a trajectory file. A missing file raises FileNotFoundError; any other unreadable file
    (truncated, foreign, inconsistent) raises TrajectoryFileError naming it."""
    return load_trajectory_and_layout(path)[0]


def read_window(path: str, layout: NpzLayout, start: int, end: int) -> Trajectory:
    """Timesteps [start, end) of the file ``layout`` was taken from (and the transitions between them),
    reading only those rows: one ``preadv`` per array into fresh writable arrays. Equals
    ``load_trajectory(path).window(start, end)``; the arrays' bytes are not CRC-checked here (the full
    load that produced ``layout`` checked them). A missing file raises FileNotFoundError, a short or
    failed read TrajectoryFileError naming the file."""
    if not 0 <= start < end <= layout.n:
        raise ValueError(f"window [{start}, {end}) outside a trajectory of {layout.n} timesteps")
    obs, arrays = {}, {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for (name, dtype, row_shape, row_bytes, transition), offset in zip(layout.schema, layout.offsets):
            out = np.empty((end - start - transition, *row_shape), dtype)
            if os.preadv(fd, [out], offset + start * row_bytes) != out.nbytes:
                raise TrajectoryFileError(f"{path}: file is shorter than its layout says")
            if name.startswith(_OBS_PREFIX):
                obs[name[len(_OBS_PREFIX) :]] = out
            else:
                arrays[name] = out
    except OSError as e:
        raise TrajectoryFileError(f"{path}: unreadable trajectory file ({type(e).__name__}: {e})") from None
    finally:
        os.close(fd)
    return Trajectory(obs=obs, **arrays)
