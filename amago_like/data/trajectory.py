"""Trajectory records and their file formats.

A trajectory of T transitions holds T+1 timesteps. Timestep t carries the observation
``obs[k][t]``, the previous action and reward ``rl2s[t] = [r_{t-1}, a_{t-1}]`` (zeros at t=0)
and the time index within the meta-episode. Transition t (``actions[t]``, ``rews[t]``,
``dones[t]``) leads from timestep t to t+1.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
from dataclasses import dataclass

import numpy as np

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
    if fmt not in FORMATS:
        raise ValueError(f"unknown trajectory format {fmt!r}; choose one of {FORMATS}")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in env_name)
    return f"{time.time_ns():020d}_{safe}_{uuid.uuid4().hex[:8]}{_SUFFIX[fmt]}"


def save_trajectory(traj: Trajectory, directory: str, env_name: str, fmt: str = "npz") -> str:
    """Write ``traj`` atomically (temporary name, then rename); returns the final path."""
    name = traj_filename(env_name, fmt)
    final = os.path.join(directory, name)
    # the temporary name has no data suffix, so readers listing the folder never pick it up
    tmp = os.path.join(directory, f".{name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if fmt == "traj":
                pickle.dump(traj, f, protocol=pickle.HIGHEST_PROTOCOL)
            elif fmt == "npz-compressed":
                np.savez_compressed(f, **traj.to_arrays())
            else:
                np.savez(f, **traj.to_arrays())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return final


def load_trajectory(path: str) -> Trajectory:
    """Read a trajectory file. A missing file raises FileNotFoundError; any other unreadable file
    (truncated, foreign, inconsistent) raises TrajectoryFileError naming it."""
    try:
        with open(path, "rb") as f:
            if path.endswith(".traj"):
                traj = pickle.load(f)
                if not isinstance(traj, Trajectory):
                    raise TrajectoryFileError(f"holds a {type(traj).__name__}, not a Trajectory")
            elif path.endswith(".npz"):
                data = np.load(f, allow_pickle=False)
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise TrajectoryFileError("not an npz archive")
                with data:
                    traj = Trajectory.from_arrays({k: data[k] for k in data.files})
            else:
                raise TrajectoryFileError("unknown file suffix (expected .npz or .traj)")
        traj.validate()
        return traj
    except FileNotFoundError:
        raise
    except TrajectoryFileError as e:
        raise TrajectoryFileError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt file can make numpy, zipfile or pickle raise almost anything
        raise TrajectoryFileError(f"{path}: unreadable trajectory file ({type(e).__name__}: {e})") from None
