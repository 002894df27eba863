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
    assert script.attempt_rewards(path, 5).shape == (2, 5)
    with pytest.raises(ValueError, match="not a whole number of 4-step attempts"):
        script.attempt_rewards(path, 4)
