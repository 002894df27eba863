"""Is a k-attempt agent short of searching or of returning? Read saved meta-episodes of an env whose reward is
positive only on the hidden goal (the dark room, the sparse point robot) and split the return by attempt 1's outcome.

python -m amago_like.evaluate RUN --split test --episodes 96 --save_trajs_to /tmp/trajs
python benchmarks/learning/search_or_return.py /tmp/trajs --attempt_length 12 --cell 0.25

Prints how often attempt 1 was rewarded (the search found the goal) and after how many steps, the mean return of each
later attempt when attempt 1 found it (returning: the most it can be is about the attempt's length less the walk
there) and when it did not (searching on), and how often a later attempt found a goal attempt 1 missed. With
``--cell S``, also how widely attempt 2 searches after attempt 1 missed: the cells (squares of side S over the
position, every observation entry but the last, the built-in envs' layout) it searches until its first reward, and
how many of them attempt 1 had not visited (the last move of an attempt is not observed, so its cell is not counted).
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from amago_like.data.trajectory import load_trajectory


def load_attempts(path: str, attempt_length: int) -> tuple[np.ndarray, np.ndarray]:
    """One saved meta-episode by attempt: its rewards (k, attempt_length) and the positions it observed
    (k, attempt_length, D), each attempt's from its start on."""
    traj = load_trajectory(path)
    rews = traj.rews[:, 0]
    if len(rews) % attempt_length:
        raise ValueError(f"{path}: {len(rews)} steps is not a whole number of {attempt_length}-step attempts")
    positions = traj.obs["observation"][: len(rews), :-1]  # (T, D): drops the next attempt's first observation
    return rews.reshape(-1, attempt_length), positions.reshape(-1, attempt_length, positions.shape[-1])


def rewarded(rewards: np.ndarray) -> np.ndarray:
    """(k, attempt_length) bool: the steps that were rewarded, i.e. reached the goal (the one test every count here
    uses)."""
    return rewards > 0


def summary(rewards: list[np.ndarray]) -> list[str]:
    hits = [rewarded(r) for r in rewards]  # each (k, attempt_length)
    found = np.array([h[0].any() for h in hits])  # (N,)
    k = rewards[0].shape[0]
    lines = [f"{len(rewards)} meta-episodes of {k} attempts"]
    lines.append(f"attempt 1 rewarded: {found.mean():.2f}")
    if found.any():
        first = [int(np.argmax(h[0])) + 1 for h, f in zip(hits, found) if f]
        lines.append(f"  steps to its first reward: {np.mean(first):.1f}")
    for label, which in (("found in attempt 1", found), ("missed in attempt 1", ~found)):
        if not which.any():
            continue
        later = np.array([r[1:].sum(axis=1) for r, w in zip(rewards, which) if w])  # (n, k - 1)
        per = ", ".join(f"{i + 2}: {v:.2f}" for i, v in enumerate(later.mean(axis=0)))
        lines.append(f"{label} ({which.sum()}): return of attempt {per}")
    if (~found).any() and k > 1:
        later_found = np.mean([h[1:].any() for h, f in zip(hits, found) if not f])
        lines.append(f"  missed in attempt 1, found in a later one: {later_found:.2f}")
    return lines


def search_breadth(rewards: list[np.ndarray], positions: list[np.ndarray], cell: float) -> list[str]:
    """After attempt 1 missed: the cells of side ``cell`` attempt 2 searched (up to the cell where it was first
    rewarded, if it was), and how many of them attempt 1 had not visited."""
    counts = []  # (cells of attempt 1, cells attempt 2 searched, of those not in attempt 1) per missed meta-episode
    for r, pos in zip(rewards, positions):
        hit = rewarded(r)
        if hit[0].any() or len(r) < 2:
            continue
        hits = np.flatnonzero(hit[1])
        walk = pos[1] if not len(hits) else pos[1][: hits[0] + 2]  # up to the position its first rewarded move reached
        seen, searched = _cells(pos[0], cell), _cells(walk, cell)
        counts.append((len(seen), len(searched), len(searched - seen)))
    if not counts:
        return []
    first, second, new = np.mean(counts, axis=0)
    return [
        f"  missed in attempt 1: it visited {first:.1f} cells; attempt 2 searched {second:.1f} until its first reward, "
        f"{new:.1f} of them new"
    ]


def _cells(positions: np.ndarray, cell: float) -> set[tuple[int, ...]]:
    """The cells of side ``cell`` that the (N, D) ``positions`` lie in."""
    return {tuple(c) for c in np.floor(positions / cell + 1e-6).astype(int)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trajs", help="a folder of saved meta-episodes (--save_trajs_to of amago_like.evaluate)")
    parser.add_argument("--attempt_length", type=int, required=True, help="steps per attempt (the env's)")
    parser.add_argument("--cell", type=float, help="side of the cells that count where an attempt searched")
    args = parser.parse_args(argv)
    if args.cell is not None and not args.cell > 0:
        parser.error(f"--cell is the side of a cell and must be above 0, got {args.cell}")
    paths = sorted(glob.glob(os.path.join(args.trajs, "*.npz")))
    if not paths:
        parser.error(f"no saved meta-episodes (*.npz) in {args.trajs}")
    attempts = [load_attempts(p, args.attempt_length) for p in paths]
    rewards, positions = [r for r, _ in attempts], [p for _, p in attempts]
    lines = summary(rewards)
    if args.cell is not None:
        lines += search_breadth(rewards, positions, args.cell)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
