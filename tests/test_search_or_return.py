"""benchmarks/learning/search_or_return.py: a k-attempt agent's return split by whether attempt 1 found the goal."""

import os

import numpy as np
import pytest
from helpers import load_script

from amago_like.data.trajectory import Trajectory, write_trajectory


@pytest.fixture(scope="module")
def script():
    return load_script(os.path.join("benchmarks", "learning", "search_or_return.py"), "search_or_return")


def test_the_return_of_later_attempts_is_split_by_attempt_ones_outcome(script):
    found = np.zeros((3, 4))
    found[0, 2:] = found[1, 1:] = found[2, 1:] = 1.0  # rewarded from step 3 of attempt 1, then straight back
    missed = np.zeros((3, 4))
    missed[2, 3] = 1.0  # found only at the end of attempt 3
    never = np.zeros((3, 4))
    lines = script.summary([found, missed, never])
    assert lines[:3] == [
        "3 meta-episodes of 3 attempts",
        "attempt 1 rewarded: 0.33",
        "  steps to its first reward: 3.0",
    ]
    assert "found in attempt 1 (1): return of attempt 2: 3.00, 3: 3.00" in lines
    assert "missed in attempt 1 (2): return of attempt 2: 0.00, 3: 0.50" in lines
    assert "  missed in attempt 1, found in a later one: 0.50" in lines


def test_a_meta_episode_that_is_not_whole_attempts_is_refused(script, tmp_path):
    T = 10
    traj = Trajectory(
        obs={"observation": np.zeros((T + 1, 3), np.float32)},
        rl2s=np.zeros((T + 1, 2), np.float32),
        time_idxs=np.arange(T + 1)[:, None],
        actions=np.zeros((T, 1), np.float32),
        rews=np.zeros((T, 1), np.float32),
        dones=np.zeros((T, 1), bool),
    )
    path = str(tmp_path / "one.npz")
    write_trajectory(traj, path)
    rewards, positions = script.load_attempts(path, 5)
    assert rewards.shape == (2, 5) and positions.shape == (2, 5, 2)  # the last obs entry is not a position
    with pytest.raises(ValueError, match="not a whole number of 4-step attempts"):
        script.load_attempts(path, 4)


def test_search_breadth_counts_the_cells_attempt_2_adds_after_a_miss(script):
    cell = 0.25
    walk = np.array([[0, 0], [0, 1], [0, 2], [0, 3]]) * cell  # (attempt_length, 2): four cells of a column
    back = np.array([[0, 0], [0, 1], [1, 1], [1, 2]]) * cell  # two cells seen in attempt 1, two new
    missed = np.zeros((2, 4))
    found = np.zeros((2, 4))
    found[0, 1] = 1.0  # found in attempt 1: not counted
    wide = np.array([[0, 0], [1, 0], [2, 0], [3, 0]]) * cell
    lines = script.search_breadth([missed, found], [np.stack([walk, back]), np.stack([walk, wide])], cell)
    assert lines == [
        "  missed in attempt 1: it visited 4.0 cells; attempt 2 searched 4.0 until its first reward, 2.0 of them new"
    ]
    # attempt 2 rewarded by its second move, to `back`'s third position: its last cell is not searched
    missed[1, 1] = 1.0
    lines = script.search_breadth([missed], [np.stack([walk, back])], cell)
    assert lines == [
        "  missed in attempt 1: it visited 4.0 cells; attempt 2 searched 3.0 until its first reward, 1.0 of them new"
    ]
    assert script.search_breadth([found], [np.stack([walk, wide])], cell) == []
