"""Hooks into the epoch loop. A callback sees the running experiment but never imports it."""

from __future__ import annotations

import math
from typing import Any

import gin


class Callback:
    """Override any of these; ``on_epoch_end`` returning True stops training after this epoch."""

    def on_epoch_start(self, experiment: Any) -> None:
        pass

    def on_epoch_end(self, experiment: Any, metrics: dict[str, float]) -> bool:
        return False


@gin.configurable
class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs in which it was logged."""

    def __init__(self, metric: str = "val/return", patience: int = 10, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.stale = 0

    def on_epoch_end(self, experiment: Any, metrics: dict[str, float]) -> bool:
        if self.metric not in metrics:
            return False
        value = metrics[self.metric]
        improved = value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        if improved:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        if self.stale >= self.patience:
            print(f"early stop: {self.metric} has not improved on {self.best:.4g} for {self.patience} evaluations")
            return True
        return False
