"""amago_like.stats: the IQM, bootstrap confidence intervals and performance profiles reported by the learning
suite and by amago_like.sweep."""

import json

import numpy as np
import pytest

from amago_like import stats


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm(np.array([0.0, 1.0, 2.0, 100.0])) == pytest.approx(1.5)  # middle two of four
    assert stats.iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
    # n = 5: the middle half is 3/4 of the 2nd value, the 3rd and 3/4 of the 4th
    assert stats.iqm(np.array([0.0, 10.0, 20.0, 30.0, 1000.0])) == pytest.approx(20.0)
    assert stats.iqm(np.array([0.0, 10.0, 20.0, 40.0, 1000.0])) == pytest.approx((7.5 + 20 + 30) / 2.5)
    assert stats.iqm(np.full(7, 0.3)) == pytest.approx(0.3)


def test_stratified_bootstrap_ci_brackets_the_iqm_and_collapses_without_spread():
    same = np.full((3, 4), 0.7)
    assert stats.stratified_bootstrap_ci(same) == pytest.approx((0.7, 0.7))
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, size=(5, 6))
    lo, hi = stats.stratified_bootstrap_ci(scores)
    assert lo <= stats.iqm(scores) <= hi and hi - lo > 0.05
    with pytest.raises(ValueError, match=r"non-empty \(runs, tasks\) matrix, got shape \(4,\)"):
        stats.stratified_bootstrap_ci(np.ones(4))


def test_stratified_bootstrap_resamples_runs_within_each_task():
    # task 0 is 0 in every run, task 1 is 1: no resample can mix them, so the mean stays 0.5 exactly
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert stats.stratified_bootstrap_ci(scores, np.mean) == pytest.approx((0.5, 0.5))


def test_bootstrap_ci_of_one_task_over_seeds():
    assert stats.bootstrap_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))
    lo, hi = stats.bootstrap_ci([0.0, 1.0, 1.0, 0.0, 1.0])
    assert 0.0 <= lo < 0.6 < hi <= 1.0  # the mean 0.6 inside; the bounds are means of resamples
    assert lo * 5 == pytest.approx(round(lo * 5)) and hi * 5 == pytest.approx(round(hi * 5))


def test_paired_difference_ci_resamples_seeds_together():
    assert stats.paired_difference_ci([0.2, 0.4], [0.5, 0.7]) == pytest.approx((0.3, 0.3))  # every seed up by 0.3
    # seeds far apart that each rise a little: resampled apart the spread of the seeds would swamp the rise
    lo, hi = stats.paired_difference_ci([0.1, 0.5, 0.9], [0.12, 0.53, 0.91])
    assert (lo, hi) == pytest.approx((0.01, 0.03))  # the smallest and largest per-seed rises
    lo, hi = stats.paired_difference_ci([0.30, 0.31, 0.13], [0.25, 0.19, 0.14])  # seeds that disagree
    assert lo < 0.0 < hi
    with pytest.raises(ValueError, match="same number"):
        stats.paired_difference_ci([0.1], [0.1, 0.2])
    with pytest.raises(ValueError, match="same number"):
        stats.paired_difference_ci([], [])


def test_performance_profile_counts_scores_above_each_threshold():
    scores = np.array([[0.1, 0.5], [0.9, 0.5]])
    assert stats.performance_profile(scores, [0.0, 0.5, 0.8, 1.0]).tolist() == [1.0, 0.25, 0.25, 0.0]
    lo, hi = stats.performance_profile_ci(np.full((3, 2), 0.5), np.array([0.0, 0.5]), reps=50)
    assert lo.tolist() == hi.tolist() == [1.0, 0.0]


def test_the_suite_uses_these_statistics(suite):
    assert suite.iqm is stats.iqm and suite.stratified_bootstrap_ci is stats.stratified_bootstrap_ci


def test_suite_compare_pairs_seeds_and_names_the_tasks_that_fell(suite, tmp_path, capsys):
    """--compare BASE --to CAND: scores on the (task, seed) pairs both files have, the change of each task's mean
    and the tasks whose mean fell; a seed only one side has is left out."""

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(dict(task=t, seed=s, env_steps=1, updates=1, wall_s=1.0, ret=r,
                                                per_episode=[r], score=0.0, bindings=[])) + "\n"
                                for t, s, r in rows))  # fmt: skip
        return str(path)

    # bandit: random 2, best 5; tmaze: random 0.5, best 1 (score = (ret - random) / (best - random))
    base = write("base.jsonl", [("bandit", 0, 5.0), ("bandit", 1, 3.5), ("tmaze", 0, 1.0), ("tmaze", 1, 0.75)])
    cand = write("cand.jsonl", [("bandit", 0, 5.0), ("bandit", 1, 5.0), ("tmaze", 0, 0.75), ("bandit", 2, 2.0)])
    suite.main(["--compare", base, "--to", cand])
    out = capsys.readouterr().out
    # bandit's per-seed changes are 0 and +0.5: their resampled means run from 0 to +0.5; one seed rose, none fell
    assert "| bandit | 0, 1 | 1.000, 0.500 | 0.750 | 1.000, 1.000 | 1.000 | +0.250 | +0.000 to +0.500 | 1, 0 |" in out
    assert "| tmaze | 0 | 1.000 | 1.000 | 0.500 | 0.500 | -0.500 | one seed: no spread to compare with | 0, 1 |" in out
    assert "tasks whose mean fell: tmaze (-0.500) (of 2 compared)" in out
    assert "tasks whose change's 95% CI excludes 0: none (of 1 with a CI)" in out
    with pytest.raises(SystemExit):
        suite.main(["--compare", base])
    # two settings' rows in one file (or a file named twice) would hide one of them: refused, naming the run
    with pytest.raises(SystemExit):
        suite.main(["--compare", base, "--to", cand, cand])
    assert "the candidate has two rows for bandit seed 0" in capsys.readouterr().err


def test_suite_score_mode_reads_the_mode_evaluation_and_leaves_out_rows_without_one(suite, tmp_path, capsys):
    """--score mode: --table_from and --compare read each row's evaluation acting with the policy's mode (--to_score:
    the candidate's side only); a row made before it was recorded is left out, and a file with none is an error."""
    old = dict(task="bandit", seed=0, env_steps=1, updates=1, wall_s=1.0, ret=3.5, per_episode=[3.5], score=0.0,
               bindings=[])  # fmt: skip
    new = {**old, "seed": 1, "ret_mode": 5.0, "per_episode_mode": [5.0], "score_mode": 0.0}
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")
    suite.main(["--table_from", str(both), "--score", "mode"])
    out = capsys.readouterr().out
    assert "| bandit | 1 | 1 | 1 | 1 | 5.000 | 5.00 | 1.000 |" in out  # rescored: (5 - 2) / (5 - 2)
    assert "| bandit | 0 |" not in out
    suite.main(["--table_from", str(both)])
    assert "| bandit | 0 | 1 | 1 | 1 | 3.500 | 3.50 | 0.500 |" in capsys.readouterr().out
    # --to_score mode: the candidate side reads the mode evaluation of the same rows (bandit seed 1: 3.5 -> 5.0)
    suite.main(["--compare", str(both), "--to", str(both), "--to_score", "mode"])
    assert "| bandit | 1 | 0.500 | 0.500 | 1.000 | 1.000 | +0.500 | one seed: no spread to compare with |" in (
        capsys.readouterr().out
    )
    only_old = tmp_path / "old.jsonl"
    only_old.write_text(json.dumps(old) + "\n")
    with pytest.raises(SystemExit):
        suite.main(["--table_from", str(only_old), "--score", "mode"])
    assert "has a mode evaluation" in capsys.readouterr().err
