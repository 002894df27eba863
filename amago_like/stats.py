"""Statistics over seeds and tasks for reporting results: the interquartile mean (IQM), bootstrap confidence
intervals (plain over seeds, paired by seed for a change, and stratified over a seeds x tasks matrix) and
performance profiles.

The aggregate measures follow Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021):
a few seeds per task make a mean over tasks fragile, the IQM over every (seed, task) score is robust to one
outlier and still uses half of the scores, and a stratified bootstrap (seeds resampled within each task) gives
its uncertainty. numpy only; nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CONFIDENCE = 0.95
REPS = 2000  # bootstrap resamples: enough that the tail percentiles barely move with the bootstrap seed


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (25% trimmed off each end)."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = len(x)
    lo, hi = n * 0.25, n * 0.75
    # fractional trimming, so that every n (not only multiples of 4) gets the exact middle half
    weights = np.clip(np.minimum(np.arange(1, n + 1), hi) - np.maximum(np.arange(n), lo), 0.0, 1.0)
    return float((weights * x).sum() / weights.sum())


def stratified_bootstrap_ci(
    scores: np.ndarray,
    stat: Callable[[np.ndarray], float] = iqm,
    reps: int = REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile CI of ``stat`` over a (runs, tasks) score matrix, resampling runs within each task."""
    values = [stat(m) for m in stratified_resamples(scores, reps, seed)]
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def stratified_resamples(scores: np.ndarray, reps: int = REPS, seed: int = 0) -> np.ndarray:
    """(reps, runs, tasks): ``reps`` copies of the (runs, tasks) matrix, each task's column drawn from its own runs
    with replacement."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"scores must be a non-empty (runs, tasks) matrix, got shape {scores.shape}")
    runs, tasks = scores.shape
    picks = np.random.default_rng(seed).integers(runs, size=(reps, runs, tasks))
    return np.take_along_axis(np.broadcast_to(scores, picks.shape), picks, axis=1)


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], float] = np.mean, **kwargs) -> tuple[float, float]:
    """Percentile CI of ``stat`` of one task's values over seeds (the stratified bootstrap of one task)."""
    return stratified_bootstrap_ci(np.asarray(values, dtype=np.float64).reshape(-1, 1), stat, **kwargs)


def paired_difference_ci(
    before: np.ndarray, after: np.ndarray, reps: int = REPS, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile CI of mean(after - before) over paired values (one task's scores by seed, the same seeds on both
    sides), the pairs resampled together: whether a change of the task's mean is larger than the spread of its
    per-seed changes (a CI that includes 0: it is not). Pairing keeps what a seed shares on both sides (its
    initial weights, its first env draws) out of the spread."""
    before, after = (np.asarray(v, dtype=np.float64).ravel() for v in (before, after))
    if before.size == 0 or before.size != after.size:
        raise ValueError(
            f"paired_difference_ci needs the same number (>= 1) of values on each side, got {before.size} and "
            f"{after.size}"
        )
    picks = np.random.default_rng(seed).integers(before.size, size=(reps, before.size))
    change = (after - before)[picks].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(change, tail)), float(np.percentile(change, 100 - tail))


def performance_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """For each threshold tau, the fraction of (run, task) scores above it."""
    flat = np.asarray(scores, dtype=np.float64).ravel()
    return np.array([(flat > tau).mean() for tau in np.asarray(taus, dtype=np.float64)])


def performance_profile_ci(
    scores: np.ndarray, taus: np.ndarray, reps: int = REPS, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper stratified bootstrap bounds of :func:`performance_profile` at each tau."""
    resamples = stratified_resamples(scores, reps, seed).reshape(reps, -1)
    fractions = (resamples[:, :, None] > np.asarray(taus, dtype=np.float64)).mean(axis=1)  # (reps, taus)
    tail = 100 * (1 - confidence) / 2
    return np.percentile(fractions, tail, axis=0), np.percentile(fractions, 100 - tail, axis=0)
