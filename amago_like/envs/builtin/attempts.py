"""The count of a meta-episode made of ``k`` attempts (episodes) of a fixed length, shared by the toy envs."""

from __future__ import annotations

from typing import Any


class Attempts:
    """Which attempt of ``k`` a meta-episode is in, its step within it and its return so far.

    ``over`` is True before the first :meth:`start` and once the last attempt has ended.
    """

    def __init__(self, k: int, length: int):
        self.k, self.length = k, length
        self.number, self.t, self.ret, self.over = 0, 0, 0.0, True

    def start(self) -> None:
        """A new meta-episode: its first attempt begins."""
        self.number, self.t, self.ret, self.over = 1, 0, 0.0, False

    def check_running(self, env_name: str) -> None:
        if self.over:
            raise RuntimeError(f"{env_name}.step() called before reset() or after the meta-episode ended")

    def record(self, reward: float, info: dict[str, Any]) -> bool:
        """Count a step that paid ``reward``. When it ends an attempt, ``info`` gets the attempt's return; returns
        True when the next attempt begins (the env puts its agent back at the start), and sets ``over`` after
        the last."""
        self.ret += reward
        self.t += 1
        if self.t < self.length:
            return False
        info[f"log/Episode {self.number} Return"] = self.ret
        if self.number == self.k:
            self.over = True
            return False
        self.number, self.t, self.ret = self.number + 1, 0, 0.0
        return True
