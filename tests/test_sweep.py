"""python -m amago_like.sweep: a training command over seeds, and the aggregate of their scores, checked against
a hand computation on fabricated runs."""

import json
import os
import re
import sys

import numpy as np
import pytest

from amago_like import stats, sweep

# per seed: task a's and task b's success in the last evaluation
SCORES = {0: (0.2, 1.0), 1: (0.4, 1.0), 2: (0.9, 1.0)}

FAKE_TRAINING = """
import json, os, sys
args = sys.argv[1:]
get = lambda flag, default=None: args[args.index(flag) + 1] if flag in args else default
seed, scores = int(get("--seed")), {scores}
if seed not in scores:
    sys.exit("no such seed")
run = os.path.join(get("--buffer_dir", "runs"), get("--run_name"))
os.makedirs(run, exist_ok=True)
a, b = scores[seed]
with open(os.path.join(run, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({{"step": 1, "val/a/Success": 0.0, "val/b/Success": 0.0}}) + "\\n")  # superseded
    f.write(json.dumps({{"step": 2, "val/Success": (a + b) / 2, "val/a/Success": a, "val/b/Success": b, "val/a/return": 7.0}}) + "\\n")
    f.write(json.dumps({{"step": 3, "learn/critic_loss": 1.0}}) + "\\n")  # rows after it hold no evaluation
with open(os.path.join(run, "argv.json"), "w") as f:
    json.dump(args, f)
print("trained", seed)
"""


@pytest.fixture
def fake_training(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(FAKE_TRAINING.format(scores=SCORES))
    return str(script)


def test_the_aggregate_equals_a_hand_computation(tmp_path, fake_training, capsys):
    runs = tmp_path / "runs"
    [result] = sweep.main(["--seeds", "0", "1", "2", "--parallel", "2", "--", fake_training, "--buffer_dir", str(runs),
                         "--run_name", "toy", "--epochs", "3"])  # fmt: skip
    # every run got its seed and a run name with the seed, and kept the other arguments
    for seed in (0, 1, 2):
        argv = json.loads((runs / f"toy_s{seed}" / "argv.json").read_text())
        assert argv == ["--buffer_dir", str(runs), "--epochs", "3", "--seed", str(seed), "--run_name", f"toy_s{seed}"]
        assert f"trained {seed}" in (runs / "toy_sweep" / "logs" / f"seed_{seed}.log").read_text()
    assert result.metric == "Success" and result.scores == {
        "a": {0: 0.2, 1: 0.4, 2: 0.9},
        "b": {0: 1.0, 1: 1.0, 2: 1.0},
    }
    per_task = result.per_task()
    assert per_task["a"]["mean"] == pytest.approx(0.5) and per_task["b"]["mean"] == 1.0
    assert per_task["b"]["ci"] == [1.0, 1.0]  # no spread, no interval
    lo, hi = per_task["a"]["ci"]
    assert 0.2 <= lo < 0.5 < hi <= 0.9
    # the IQM of 0.2, 0.4, 0.9, 1, 1, 1: the middle half is half of 0.4, 0.9, 1 and half of 1
    value, (lo, hi) = result.iqm()
    assert value == pytest.approx((0.5 * 0.4 + 0.9 + 1.0 + 0.5 * 1.0) / 3)
    assert (lo, hi) == stats.stratified_bootstrap_ci(np.array([[0.2, 1.0], [0.4, 1.0], [0.9, 1.0]]))
    folder = runs / "toy_sweep"
    table = (folder / "table.md").read_text()
    assert "| a | 3 | 0.500 |" in table and "| 0.200, 0.400, 0.900 |" in table
    assert f"IQM over 2 tasks x 3 seeds: {value:.3f}" in table
    assert json.loads((folder / "results.json").read_text())["iqm"] == pytest.approx(value)
    for png in ("per_task.png", "performance_profile.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    assert "IQM over 2 tasks" in capsys.readouterr().out


def test_a_failed_seed_is_named_and_left_out(tmp_path, fake_training, capsys):
    runs = str(tmp_path / "runs")
    with pytest.raises(SystemExit, match=r"seeds \[7\] failed \(aggregated without them\)"):
        sweep.main(["--seeds", "0", "7", "--", fake_training, "--buffer_dir", runs])
    out = capsys.readouterr().out
    assert "seed 7: failed with exit status 1; its log ends:" in out and "no such seed" in out
    table = open(os.path.join(runs, "train_sweep", "table.md")).read()  # NAME from the script, without --run_name
    assert "per seed (s0) |" in table and "| a | 1 | 0.200 |" in table


def test_aggregate_only_reads_the_runs_there_and_a_protocol_reads_their_matrices(tmp_path, fake_training):
    runs = str(tmp_path / "runs")
    sweep.main(["--seeds", "0", "1", "--", fake_training, "--buffer_dir", runs, "--run_name", "x"])
    [returns] = sweep.main(["--seeds", "0", "1", "--aggregate_only", "--metric", "return", "--", fake_training,
                          "--buffer_dir", runs, "--run_name", "x"])  # fmt: skip
    assert returns.scores == {"a": {0: 7.0, 1: 7.0}}
    for seed, success in ((0, "0.2500"), (1, "0.7500")):  # as amago_like.evaluate --protocol writes them
        os.makedirs(os.path.join(runs, f"x_s{seed}", "eval"))
        for protocol, scale in (("k-attempt", 1.0), ("metaworld", 0.5)):
            rate = f"{float(success) * scale:.4f}"
            with open(os.path.join(runs, f"x_s{seed}", "eval", f"{protocol}_test.csv"), "w") as f:
                f.write(f"task,goals,attempt 1,success\nreach-v3,50,0.1,{rate}\nmean over tasks,50,0.1,{rate}\n")
    k_attempt, metaworld = sweep.main(["--seeds", "0", "1", "--aggregate_only", "--protocol", "k-attempt", "metaworld",
                                       "--", fake_training, "--buffer_dir", runs, "--run_name", "x"])  # fmt: skip
    assert k_attempt.scores == {"reach-v3": {0: 0.25, 1: 0.75}} and k_attempt.per_task()["reach-v3"]["mean"] == 0.5
    assert metaworld.scores == {"reach-v3": {0: 0.125, 1: 0.375}}
    # each protocol's tables in a folder of its own, beside the metrics' table
    for protocol in ("k-attempt", "metaworld"):
        table = open(os.path.join(runs, "x_sweep", f"{protocol}_test", "table.md")).read()
        assert f"success under the {protocol} protocol on the test split" in table
    assert "return of the last val/ evaluation" in open(os.path.join(runs, "x_sweep", "table.md")).read()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0", "1", "examples/toy.py"], "put the training command after --"),
        (["--seeds", "0", "--", "examples/toy.py", "--seed", "3"], "the sweep gives every run its --seed: drop --seed"),
        (["--seeds", "0", "0", "--", "examples/toy.py"], r"--seeds lists a seed twice: \[0, 0\]"),
        (["--seeds", "0", "--parallel", "0", "--", "examples/toy.py"], "--parallel must be 1 or more, got 0"),
    ],
)
def test_bad_sweep_arguments_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        sweep.main(argv)
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_a_run_without_an_evaluation_says_what_to_do(tmp_path):
    os.makedirs(tmp_path / "runs" / "t_s0")
    (tmp_path / "runs" / "t_s0" / "metrics.jsonl").write_text('{"step": 1, "learn/critic_loss": 1.0}\n')
    with pytest.raises(SystemExit, match="holds no val/ evaluation: train with Experiment.val_interval set"):
        sweep.main(["--seeds", "0", "--aggregate_only", "--", sys.executable, "--run_name", "t", "--buffer_dir",
                    str(tmp_path / "runs")])  # fmt: skip


def test_protocol_args_reach_only_their_protocols_evaluation(tmp_path, fake_training, monkeypatch):
    commands = []

    class Stop(Exception):
        pass

    def run_jobs(jobs, parallel):
        commands.extend(c for job in jobs for c in job.commands[1:])  # the evaluations after each training
        raise Stop

    monkeypatch.setattr(sweep, "run_jobs", run_jobs)
    with pytest.raises(Stop):
        sweep.main(["--seeds", "0", "--protocol", "k-attempt", "metaworld", "--eval_args", "--actions mode",
                    "--protocol_args", "metaworld", "--adaptation_episodes 2 --evaluation_episodes 1",
                    "--", fake_training, "--buffer_dir", str(tmp_path)])  # fmt: skip
    k_attempt, metaworld = commands
    assert k_attempt[-6:] == ["--protocol", "k-attempt", "--split", "test", "--actions", "mode"]
    assert metaworld[-6:] == ["--actions", "mode", "--adaptation_episodes", "2", "--evaluation_episodes", "1"]
    with pytest.raises(SystemExit):  # argparse's error: a protocol the sweep does not evaluate
        sweep.main(["--seeds", "0", "--protocol", "k-attempt", "--protocol_args", "metaworld", "--actions mode",
                    "--", fake_training])  # fmt: skip


def test_the_protocol_choices_are_the_evaluators():
    from amago_like.protocols import PROTOCOLS

    choices = next(a.choices for a in sweep.parser()._actions if a.dest == "protocol")
    assert tuple(choices) == PROTOCOLS
