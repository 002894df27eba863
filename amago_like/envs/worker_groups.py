"""An async vector env whose worker processes each step a group of envs (``env_mode="async"``).

gymnasium's AsyncVectorEnv gives every env its own process: each vector step sends one action to,
and unpickles one result from, every env, and that per-env work is done by the one main process.
With many cheap envs (a collector feeding a GPU learner) it, not the simulators, sets how fast a
run collects. Here each worker process steps a :class:`LeanSyncVectorEnv` of several envs: one
message each way per worker per step, and the main process only joins the workers' batches.

``GroupedAsyncVectorEnv(env_fns, envs_per_worker)`` returns exactly what
``LeanSyncVectorEnv(env_fns)`` returns (same-step autoreset; infos batched with ``_key`` masks), with
``ceil(len(env_fns) / envs_per_worker)`` processes stepping in parallel. Env ``i`` keeps index ``i``
(workers take consecutive envs), so seeds, file names and per-actor task assignment do not change.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import CloudpickleWrapper, batch_space, clear_mpi_env_vars

from amago_like.envs.lean_sync import LeanSyncVectorEnv


class EnvWorkerError(RuntimeError):
    """The traceback of an exception raised in an env worker process (the cause of the error re-raised here)."""


def group_sizes(num_envs: int, envs_per_worker: int) -> list[int]:
    """Envs per worker: ``ceil(num_envs / envs_per_worker)`` workers, sizes as equal as they can be."""
    workers = -(-num_envs // envs_per_worker)
    base, extra = divmod(num_envs, workers)
    return [base + (w < extra) for w in range(workers)]


def _worker(env_fns: CloudpickleWrapper, pipe, parent_pipe) -> None:
    parent_pipe.close()
    envs = None
    try:
        envs = LeanSyncVectorEnv(env_fns.fn)
        pipe.send(((envs.single_observation_space, envs.single_action_space, envs.metadata, envs.render_mode), True))
        while True:
            try:
                command, data = pipe.recv()
            except EOFError:  # the main process is gone (killed): nothing to report to
                return
            if command == "step":
                result = envs.step(data)
            elif command == "reset":
                result = envs.reset(**data)
            elif command == "call":
                name, args, kwargs = data
                result = envs.call(name, *args, **kwargs)
            elif command == "set_attr":
                result = envs.set_attr(*data)
            elif command == "close":
                pipe.send((None, True))
                return
            else:
                raise RuntimeError(f"unknown env worker command {command!r}")
            pipe.send((result, True))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the main process closes by force
        pass
    except Exception as err:  # noqa: BLE001 - every error goes back to the main process, named
        trace = traceback.format_exc()
        try:
            pipe.send(((type(err), str(err), trace), False))
        except OSError:  # the main process is gone
            pass
        except Exception:  # noqa: BLE001 - the error's type does not pickle
            with contextlib.suppress(OSError):
                pipe.send(((RuntimeError, f"{type(err).__name__}: {err}", trace), False))
    finally:
        if envs is not None:
            envs.close()


def _join_batches(parts: list[Any]) -> Any:
    """Batched observations of consecutive env groups as one batch (dicts and tuples of arrays kept)."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: _join_batches([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(_join_batches(list(p)) for p in zip(*parts))
    return np.concatenate(parts)


def _place_infos(out: dict, part: dict, start: int, size: int, num_envs: int) -> None:
    """Put one group's batched infos (``size`` envs, ``_key`` masks) at env ``start`` of ``num_envs``-env infos."""
    for key, value in part.items():
        if isinstance(value, dict):
            _place_infos(out.setdefault(key, {}), value, start, size, num_envs)
            continue
        value = np.asarray(value)
        batch = out.get(key)
        if batch is None:  # as gymnasium batches a key that some envs lack: zeros (None for objects), mask False
            fill = None if value.dtype == object else 0
            batch = out[key] = np.full((num_envs, *value.shape[1:]), fill, dtype=value.dtype)
        batch[start : start + size] = value


class GroupedAsyncVectorEnv(gym.vector.VectorEnv):
    """``len(env_fns)`` envs in worker processes of ``envs_per_worker`` envs each (see the module's description).

    ``context``: the multiprocessing start method (None: the platform's default). An exception in a worker
    is raised here with its type and message, the worker's traceback as its cause; that worker stops.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], envs_per_worker: int = 1, context: str | None = None):
        if envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
        env_fns = list(env_fns)
        self.num_envs = len(env_fns)
        self.sizes = group_sizes(self.num_envs, envs_per_worker)
        self.starts = np.cumsum([0, *self.sizes[:-1]]).tolist()
        ctx = multiprocessing.get_context(context)
        self.pipes: list[Any] = []
        self.processes = []
        with clear_mpi_env_vars():
            for w, (start, size) in enumerate(zip(self.starts, self.sizes)):
                parent, child = ctx.Pipe()
                group = CloudpickleWrapper(env_fns[start : start + size])
                process = ctx.Process(target=_worker, args=(group, child, parent), name=f"EnvWorker-{w}", daemon=True)
                process.start()
                child.close()
                self.pipes.append(parent)
                self.processes.append(process)
        self._pending: str | None = None
        try:
            spaces = self._receive_all()
        except BaseException:
            self.close_extras(terminate=True)
            raise
        self.single_observation_space, self.single_action_space, metadata, self.render_mode = spaces[0]
        for w, (obs_space, action_space, _, _) in enumerate(spaces):
            if (obs_space, action_space) != (self.single_observation_space, self.single_action_space):
                self.close_extras(terminate=True)
                raise ValueError(
                    f"env worker {w}'s envs have observation space {obs_space} and action space {action_space}, "
                    f"worker 0's {self.single_observation_space} and {self.single_action_space}: all envs of a "
                    "vector env need the same spaces"
                )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {**metadata, "autoreset_mode": AutoresetMode.SAME_STEP}

    # ------------------------------------------------------------------ messages
    def _send(self, command: str, per_worker: Sequence[Any]) -> None:
        if self._pending is not None:
            raise RuntimeError(f"'{command}' called while '{self._pending}' waits for its results")
        for w, pipe in enumerate(self.pipes):
            if pipe is None:
                raise RuntimeError(f"env worker {w} stopped after an error; close these envs and build new ones")
            pipe.send((command, per_worker[w]))
        self._pending = command

    def _receive_all(self) -> list[Any]:
        """Every worker's reply; the first worker error is raised once all have replied."""
        results, error = [], None
        for w, pipe in enumerate(self.pipes):
            result, ok = pipe.recv()
            if not ok:
                self.pipes[w] = None
                pipe.close()
                error = error or (w, *result)
            results.append(result)
        self._pending = None
        if error is not None:
            w, kind, message, trace = error
            try:
                exc = kind(message)
            except Exception:  # noqa: BLE001 - an exception type whose constructor takes other arguments
                exc = RuntimeError(f"{kind.__name__}: {message}")
            raise exc from EnvWorkerError(f"in env worker {w}:\n{trace}")
        return results

    def _per_worker(self, values: Sequence[Any]) -> list[Sequence[Any]]:
        """``values``, one per env (a list, tuple or array), cut into each worker's consecutive share."""
        return [values[s : s + n] for s, n in zip(self.starts, self.sizes)]

    # ------------------------------------------------------------------ the VectorEnv interface
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset(seed=...) takes one seed or {self.num_envs} of them, got {len(seeds)}")
        self._send("reset", [{"seed": s, "options": options} for s in self._per_worker(seeds)])
        parts = self._receive_all()
        return _join_batches([obs for obs, _ in parts]), self._join_infos([info for _, info in parts])

    def step_async(self, actions) -> None:
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(
                f"expected actions for {self.num_envs} envs (leading dimension {self.num_envs}), got shape "
                f"{actions.shape}"
            )
        self._send("step", self._per_worker(actions))

    def step_wait(self):
        if self._pending != "step":
            raise RuntimeError("step_wait() needs a step_async() before it")
        parts = self._receive_all()
        obs = _join_batches([p[0] for p in parts])
        rewards, terminations, truncations = (np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))
        return obs, rewards, terminations, truncations, self._join_infos([p[4] for p in parts])

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self._send("call", [(name, args, kwargs)] * len(self.pipes))
        return tuple(r for part in self._receive_all() for r in part)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr('{name}') takes one value or {self.num_envs} of them, got {len(values)}")
        self._send("set_attr", [(name, v) for v in self._per_worker(values)])
        self._receive_all()

    def render(self):
        return self.call("render")

    def _join_infos(self, parts: list[dict]) -> dict:
        out: dict = {}
        for part, start, size in zip(parts, self.starts, self.sizes):
            _place_infos(out, part, start, size, self.num_envs)
        return out

    def close_extras(self, terminate: bool = False) -> None:
        """Stop the workers: ask each to close its envs, or (``terminate``) end their processes."""
        if not terminate:
            if self._pending is not None:
                self._receive_all()
            live = [p for p in self.pipes if p is not None]
            for pipe in live:
                pipe.send(("close", None))
            for pipe in live:
                pipe.recv()
        for process in self.processes:
            if terminate and process.is_alive():
                process.terminate()
        for pipe in self.pipes:
            if pipe is not None:
                pipe.close()
        for process in self.processes:
            process.join()

    def __del__(self) -> None:
        if not getattr(self, "closed", True) and hasattr(self, "processes"):
            self.close(terminate=True)
