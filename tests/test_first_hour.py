"""Issue 23, the first hour of a new user: help, progress without a terminal, plots, bad bindings,
demonstration folders, wandb without a key."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import load_example

from amago_like.cli import REPO_ROOT

EXAMPLES = ("toy", "metaworld")


def _help_in_subprocess(example: str) -> tuple[str, list[str]]:
    """(the --help text, which heavy packages were imported to print it)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['{example}.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({os.path.join(REPO_ROOT, 'examples', example + '.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'accelerate', 'gymnasium', 'metaworld', 'wandb') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    text, _, heavy = out.rpartition("HEAVY=")
    return text, [m for m in heavy.strip().split(",") if m]


def _help_of(options: str, flag: str) -> str:
    """The help text argparse printed for ``flag`` (after its metavar, or on the lines below it)."""
    lines = options.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith(flag + " ") or ln.strip() == flag)
    first = lines[start].strip().split("  ", 1)  # "--flag ARG   help text" or just "--flag {a,b}"
    text = [first[1]] if len(first) == 2 else []
    for ln in lines[start + 1 :]:
        if ln.strip().startswith("-"):
            break
        text.append(ln.strip())
    return " ".join(text).strip()


# ------------------------------------------------------------------ item 5: --help is fast and complete
@pytest.mark.parametrize("example", EXAMPLES)
def test_help_imports_no_heavy_package(example):
    text, heavy = _help_in_subprocess(example)
    assert "usage:" in text
    assert heavy == [], f"--help imported {heavy}"


@pytest.mark.parametrize("example", EXAMPLES)
def test_help_describes_every_flag_and_shows_defaults(example):
    text, _ = _help_in_subprocess(example)
    options = text[text.index("options:") :]
    for flag in ("--epochs", "--parallel_actors", "--env_mode", "--mixed_precision", "--max_seq_len",
                 "--batch_size", "--seed", "--buffer_dir", "--configs", "--gin", "--run_name"):  # fmt: skip
        assert _help_of(options, flag), f"{flag} has no help text"
    assert "(default: runs/)" in options
    assert "quick.gin" in options if example == "metaworld" else "bandit.gin" in options


# ------------------------------------------------------------------ item 6: a wrong-type binding is one line, exit 2
@pytest.mark.parametrize(
    "binding, message",
    [
        ('Agent.num_critics = "four"', "Agent.num_critics must be an integer, got 'four' (str); bind a whole number"),
        ("Agent.num_critics = 2.5", "Agent.num_critics must be an integer, got 2.5 (float); bind a whole number"),
        ('Experiment.learning_rate = "fast"', "Experiment.learning_rate must be a number, got 'fast' (str); bind a"),
        ("Agent.popart = 1", "Agent.popart must be True or False, got 1 (int); bind True or False"),
        ('Agent.gammas = (0.9, "x")', "Agent.gammas must be a tuple of numbers"),
        ('Experiment.dataset = "demos/"', "Experiment.dataset must be a RLDataset object, got 'demos/' (str)"),
    ],
)
def test_wrong_type_binding_is_one_line_with_exit_status_2(tmp_path, capsys, binding, message):
    buffer_dir = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        load_example("toy").main(["--buffer_dir", str(buffer_dir), "--gin", binding])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"error: bad gin binding {binding!r}: ") and message in err
    assert not buffer_dir.exists()  # nothing was built


def test_wrong_type_in_a_config_file_names_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "mine.gin"
    config.write_text("include 'configs/bandit.gin'\n\nExperiment.epochs = 3\nTformerTrajEncoder.n_layers = '2'\n")
    with pytest.raises(SystemExit) as exit_info:
        load_example("toy").main(["--buffer_dir", str(tmp_path / "runs"), "--configs", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: in gin file {config} line 4: TformerTrajEncoder.n_layers must be an integer, got '2' (str); "
        "bind a whole number without quotes or decimals, e.g. TformerTrajEncoder.n_layers = 2"
    )


def test_unparsable_binding_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example("toy").main(["--buffer_dir", str(tmp_path / "runs"), "--gin", "Experiment.epochs = (3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "close every bracket" in err


def test_references_and_macros_are_not_type_checked():
    from amago_like.cli import apply_gin

    apply_gin([], ["BATCH = 8", "Experiment.batch_size = %BATCH", "Experiment.tstep_encoder_type = @FFTstepEncoder"])


def test_failed_start_leaves_no_empty_run_folder(tmp_path):
    buffer_dir = tmp_path / "runs"
    with pytest.raises(ValueError, match="max_seq_len must be >= 2"):
        load_example("toy").main(["--buffer_dir", str(buffer_dir), "--max_seq_len", "1"])
    assert not buffer_dir.exists()


# ------------------------------------------------------------------ item 2: progress lines without a terminal
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run_phase(reporter, clock, desc, steps, seconds_per_step, unit="batches"):
    for _ in reporter.track(range(steps), desc, unit=unit):
        clock.now += seconds_per_step


def test_progress_lines_every_interval_with_rate_and_eta():
    import io

    from amago_like.logging import ProgressReporter

    clock, out = FakeClock(), io.StringIO()
    reporter = ProgressReporter(interval_s=20.0, stream=out, clock=clock)
    _run_phase(reporter, clock, "epoch 3 train", steps=120, seconds_per_step=1.0)  # a 2-minute phase
    lines = out.getvalue().splitlines()
    assert len(lines) == 120 // 20 + 1  # one every 20 s, and one when it ends
    assert lines[0] == "epoch 3 train: 20/120 batches (17%), 1 batches/s, ETA 1m40s, 20s so far"
    assert lines[2].startswith("epoch 3 train: 60/120 batches (50%)") and "ETA 1m00s" in lines[2]
    assert lines[-1] == "epoch 3 train: 120 batches done in 2m00s (1 batches/s)"


def test_progress_is_quiet_for_short_phases_and_shares_the_interval_across_phases():
    import io

    from amago_like.logging import ProgressReporter

    clock, out = FakeClock(), io.StringIO()
    reporter = ProgressReporter(interval_s=20.0, stream=out, clock=clock)
    _run_phase(reporter, clock, "epoch 0 val", steps=10, seconds_per_step=0.5)  # 5 s: nothing
    assert out.getvalue() == ""
    for epoch in range(1, 5):  # 8 s phases: a line each time 20 s have passed since the last line
        _run_phase(reporter, clock, f"epoch {epoch} collect", steps=8, seconds_per_step=1.0, unit="steps")
    lines = out.getvalue().splitlines()
    assert lines and all("collect" in ln for ln in lines)
    assert lines[0].startswith("epoch 2 collect: 7/8 steps (88%)")  # 5 + 8 + 7 = 20 s after the start


def test_progress_shows_slow_steps_as_seconds_per_step():
    import io

    from amago_like.logging import ProgressReporter

    clock, out = FakeClock(), io.StringIO()
    reporter = ProgressReporter(interval_s=20.0, stream=out, clock=clock)
    _run_phase(reporter, clock, "epoch 0 train", steps=3, seconds_per_step=25.0)
    assert out.getvalue().splitlines()[0] == "epoch 0 train: 1/3 batches (33%), 25 s each, ETA 50s, 25s so far"


def test_progress_uses_bars_only_on_a_terminal(monkeypatch, capsys):
    import amago_like.logging as logging_module

    monkeypatch.setattr(logging_module, "bars_wanted", lambda: False)
    assert list(logging_module.progress(range(3), "x", disable=True)) == [0, 1, 2]
    tracked = logging_module.progress(range(3), "x", disable=None)
    assert type(tracked).__name__ == "generator" and list(tracked) == [0, 1, 2]
    monkeypatch.setattr(logging_module, "bars_wanted", lambda: True)
    assert type(logging_module.progress(range(3), "x", disable=None)).__name__ == "tqdm"


# ------------------------------------------------------------------ item 10: wandb without an API key
def _no_wandb_key(monkeypatch, home):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_log_to_wandb_without_a_key_says_wandb_mode_offline(tmp_path, monkeypatch, capsys):
    _no_wandb_key(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_example("toy").main(["--buffer_dir", str(tmp_path / "runs"), "--log_to_wandb"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no API key" in err and "WANDB_MODE=offline" in err
    assert not (tmp_path / "runs").exists()


def test_wandb_key_check_accepts_offline_mode_a_key_or_a_login(tmp_path, monkeypatch):
    from amago_like.logging import wandb_key_problem

    _no_wandb_key(monkeypatch, tmp_path)
    assert "WANDB_MODE=offline" in wandb_key_problem()
    assert wandb_key_problem({"HOME": str(tmp_path), "WANDB_MODE": "offline"}) is None
    assert wandb_key_problem({"HOME": str(tmp_path), "WANDB_API_KEY": "x" * 40}) is None
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_key_problem({"HOME": str(tmp_path)}) is None


def test_init_wandb_turns_the_missing_key_into_one_line(tmp_path):
    pytest.importorskip("wandb")
    # in a fresh process: a failed online wandb.init leaves wandb's process-wide settings behind, and a later
    # WANDB_MODE=offline run in the same process (test_experiment) would fail on them
    code = (
        "from amago_like.logging import WandbSetupError, init_wandb\n"
        "try:\n"
        f"    init_wandb(project='p', dir={str(tmp_path)!r}, mode='online')\n"
        "except WandbSetupError as e:\n"
        "    print('REFUSED', e)\n"
    )
    drop = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "NETRC", "WANDB_BASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HOME=str(tmp_path), WANDB_DIR=str(tmp_path), PYTHONPATH=REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    refused = [line for line in out.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 1 and "WANDB_MODE=offline" in refused[0]


# ------------------------------------------------------------------ items 3/4: plots at any time, that do not mislead
def _metrics_rows(tasks: list[str], epochs: int = 4, batches: int = 6, log_interval: int = 2) -> list[dict]:
    """Rows as Experiment.log writes them: a row of one batch every log_interval updates (learn/ only),
    an epoch row (epoch means, val/ measured at the epoch's start, epoch_seconds), then the final
    evaluation (val/ only) after the last epoch."""
    rows, updates = [], 0
    for epoch in range(epochs):
        epoch_row = {"val/return": float(epoch), **{f"val/{t}/Success": epoch / epochs for t in tasks}}
        lrs = []
        for b in range(batches):
            updates += 1
            lrs.append(1e-4 * min(1.0, updates / 12))
            if (b + 1) % log_interval == 0:
                rows.append({"step": updates, "learn/lr": lrs[-1], "epoch": epoch, "grad_updates": updates})
        epoch_row.update({"learn/lr": sum(lrs) / len(lrs), "train/return": 1.0, "epoch_seconds": 3.0})
        rows.append({"step": updates, **epoch_row, "epoch": epoch + 1, "total_frames": 100 * (epoch + 1),
                     "grad_updates": updates})  # fmt: skip
    rows.append({"step": updates, "val/return": float(epochs), "epoch": epochs, "grad_updates": updates})
    return rows


def _write_rows(run_dir, rows) -> None:
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_learn_series_keep_single_batches_and_epoch_means_apart():
    from amago_like.plots import metric_series

    series = {s.kind: s for s in metric_series(_metrics_rows(["a"]))["learn/lr"]}
    assert set(series) == {"batch", "epoch"}
    batch, epoch = series["batch"], series["epoch"]
    assert batch.xs == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]  # gradient updates
    assert batch.ys == sorted(batch.ys)  # the warm-up rises: no dip where an epoch's mean was spliced in
    assert epoch.xs == [6, 12, 18, 24]


def test_val_points_sit_at_the_training_they_measured_without_a_double_last_point():
    from amago_like.plots import metric_series

    (val,) = metric_series(_metrics_rows(["a"]))["val/return"]
    assert val.xs == [0, 1, 2, 3, 4]  # evaluated at the start of epochs 1..4, then after the last one
    assert len(set(val.xs)) == len(val.xs)
    assert val.ys == [0.0, 1.0, 2.0, 3.0, 4.0]
    (train,) = metric_series(_metrics_rows(["a"]))["train/return"]
    assert train.xs == [100, 200, 300, 400]  # environment steps collected


def test_plot_metrics_labels_axes_by_what_they_count_and_writes_atomically(tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.image

    from amago_like.plots import plot_metrics

    run = tmp_path / "run"
    _write_rows(run, _metrics_rows(["reach-v3", "push-v3"]))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "learn/lr": 0.0')  # a last line cut short by a kill
    labels = []

    class RecordingFigure(matplotlib.figure.Figure):
        def savefig(self, *args, **kwargs):
            labels.extend((ax.get_title(), ax.get_xlabel()) for ax in self.axes)
            return super().savefig(*args, **kwargs)

    monkeypatch.setattr(matplotlib.figure, "Figure", RecordingFigure)
    written = plot_metrics(str(run))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["learn_lr.png", "train_return.png", "val_Success.png", "val_return.png"]
    assert sorted(n for n in os.listdir(run / "plots") if not n.startswith(".")) == names
    assert not [n for n in os.listdir(run / "plots") if n.endswith(".tmp")]
    assert matplotlib.image.imread(written[0]).shape[0] > 100
    titles = dict(labels)
    assert titles["learn/lr"] == "gradient updates (optimizer steps)"
    assert titles["train/return"] == "environment steps collected (all actors)"
    assert titles["val/return"] == "epochs of training before the evaluation"
    assert "step" not in titles.values()
    assert plot_metrics(str(run)) == written  # again, as at every checkpoint


def test_many_tasks_are_drawn_as_a_heatmap_one_row_per_task(tmp_path):
    import matplotlib.image

    from amago_like.plots import plot_metrics

    tasks = [f"task-{i:02d}-v3" for i in range(45)]
    run = tmp_path / "run"
    _write_rows(run, _metrics_rows(tasks))
    (path,) = [p for p in plot_metrics(str(run)) if p.endswith("val_Success.png")]
    few = tmp_path / "few"
    _write_rows(few, _metrics_rows(tasks[:5]))
    (few_path,) = [p for p in plot_metrics(str(few)) if p.endswith("val_Success.png")]
    # a row per task: the figure grows with the number of tasks instead of recycling ten colours
    assert matplotlib.image.imread(path).shape[0] > 2 * matplotlib.image.imread(few_path).shape[0]


def test_plotting_again_redraws_only_what_changed_and_can_run_in_the_background(tmp_path):
    from amago_like.plots import plot_metrics, plot_metrics_in_background

    run = tmp_path / "run"
    rows = _metrics_rows(["a"])
    _write_rows(run, rows)
    written = plot_metrics(str(run))
    mtimes = {p: os.stat(p).st_mtime_ns for p in written}
    rows.append({"step": 30, "learn/lr": 1e-4, "epoch": 4, "grad_updates": 30})  # a new learn/ row only
    _write_rows(run, rows)
    thread = plot_metrics_in_background(str(run))
    thread.join(timeout=60)
    changed = [os.path.basename(p) for p in written if os.stat(p).st_mtime_ns != mtimes[p]]
    assert changed == ["learn_lr.png"]


# ------------------------------------------------------------------ item 8: a folder of trajectory files
def _demo_folder(folder, n: int = 3):
    """``n`` bandit trajectories saved straight into ``folder``, as evaluate_test(save_trajs_to=folder) does."""
    import numpy as np

    from amago_like.data import Trajectory, save_trajectory

    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        T, A = 6, 3
        rl2s = np.zeros((T + 1, 1 + A), dtype=np.float32)
        traj = Trajectory(
            obs={"observation": np.full((T + 1, 1), i, dtype=np.float32)},
            rl2s=rl2s,
            time_idxs=np.arange(T + 1, dtype=np.int64)[:, None],
            actions=np.eye(A, dtype=np.float32)[np.arange(T) % A],
            rews=np.ones((T, 1), dtype=np.float32),
            dones=np.eye(1, T, T - 1, dtype=bool).T,
        )
        save_trajectory(traj, str(folder), "demo")
    return folder


def test_pointing_a_buffer_dataset_at_a_folder_of_files_is_refused_without_creating_anything(tmp_path):
    from amago_like.data import DiskTrajDataset, EmptyDatasetError

    demos = _demo_folder(tmp_path / "demos")
    before = sorted(os.listdir(demos))
    with pytest.raises(EmptyDatasetError, match=r"holds 3 trajectory files itself.*TrajFolderDataset.*demo_dirs"):
        DiskTrajDataset(dset_root=str(tmp_path), dset_name="demos")
    assert sorted(os.listdir(demos)) == before  # no buffer/{fifo,protected} made inside it


def test_a_folder_of_trajectory_files_is_a_read_only_dataset(tmp_path):
    import numpy as np

    from amago_like.data import TrajFolderDataset

    demos = _demo_folder(tmp_path / "demos")
    dataset = TrajFolderDataset(str(demos))
    assert len(dataset) == 3 and dataset.save_new_trajs_to is None and dataset.ready_for_training
    window = dataset.sample_random_window(np.random.default_rng(0), 4)
    assert len(window) == 4
    dataset.on_end_of_collection()
    with pytest.raises(PermissionError):
        dataset.delete_from_disk()
    assert len(os.listdir(demos)) == 3
    assert "3 trajectories" in dataset.get_description()


def test_an_empty_folder_is_refused_saying_where_it_looked(tmp_path):
    from amago_like.data import DiskTrajDataset, EmptyDatasetError, TrajFolderDataset

    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match=f"no trajectory files .* in {tmp_path / 'empty'}"):
        TrajFolderDataset(str(tmp_path / "empty"))
    _demo_folder(tmp_path / "nested" / "run_a")  # the files are one level further down
    with pytest.raises(EmptyDatasetError, match="subfolders that hold some: run_a"):
        TrajFolderDataset(str(tmp_path / "nested"))
    with pytest.raises(EmptyDatasetError, match="is not a folder"):
        DiskTrajDataset(str(tmp_path), "run", demo_dirs=[str(tmp_path / "missing")])


def test_demonstrations_join_a_run_buffer_and_are_never_deleted(tmp_path):
    from amago_like.data import DiskTrajDataset

    demos = _demo_folder(tmp_path / "demos", n=2)
    dataset = DiskTrajDataset(str(tmp_path / "runs"), "run", dset_max_size=1, demo_dirs=[str(demos)])
    _demo_folder(dataset.fifo_dir, n=3)  # three collected trajectories
    dataset.refresh_files()
    assert len(dataset) == 5
    dataset.on_end_of_collection()  # the FIFO bound keeps one collected file
    assert len(dataset) == 1 + 2 and len(os.listdir(demos)) == 2
    assert "demonstrations from" in dataset.get_description()


def test_gin_and_the_demos_flag_bind_demonstration_folders(tmp_path):
    import argparse

    import gin

    from amago_like.cli import add_common_args, apply_gin, flag_bindings

    demos = _demo_folder(tmp_path / "demos")
    args = add_common_args(argparse.ArgumentParser()).parse_args(["--demos", str(demos)])
    apply_gin([], flag_bindings(args))
    assert gin.query_parameter("DiskTrajDataset.demo_dirs") == [str(demos)]


@pytest.mark.usefixtures("one_thread")
def test_offline_training_on_a_folder_of_trajectories(tmp_path):
    from amago_like import Experiment, MetaBandit
    from amago_like.cli import apply_gin
    from amago_like.data import DiskTrajDataset, TrajFolderDataset

    apply_gin([os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")], [])
    settings = dict(
        max_seq_len=7, make_train_env=MetaBandit, make_val_env=MetaBandit, val_timesteps_per_epoch=6,
        parallel_actors=2, env_mode="sync", train_timesteps_per_epoch=12, train_batches_per_epoch=3, batch_size=4,
        val_interval=None, ckpt_interval=None, verbose=False, seed=0,
    )  # fmt: skip
    collector = Experiment(
        run_name="collect", ckpt_base_dir=str(tmp_path), dataset=DiskTrajDataset(str(tmp_path), "collect"),
        epochs=1, start_learning_at_epoch=1, **settings,
    )  # fmt: skip
    collector.learn()
    collector.close()
    offline = Experiment(
        run_name="offline", ckpt_base_dir=str(tmp_path),
        dataset=TrajFolderDataset(collector.dataset.fifo_dir), epochs=2, start_collecting_at_epoch=2, **settings,
    )  # fmt: skip
    offline.learn()
    offline.close()
    assert offline.grad_updates == 6 and offline.total_frames == 0


def test_a_single_task_is_not_drawn_twice():
    from amago_like.plots import metric_series

    rows = [{"val/return": 1.0, "val/bandit/return": 1.0, "epoch": 1, "epoch_seconds": 1.0}]
    rows.append({"val/return": 2.0, "val/bandit/return": 2.0, "epoch": 1})
    (only,) = metric_series(rows)["val/return"]
    assert only.label == "bandit" and only.ys == [1.0, 2.0]


def test_training_that_does_not_collect_first_refuses_an_empty_dataset_saying_where_it_looked(tmp_path):
    from amago_like.data import DiskTrajDataset, EmptyDatasetError, require_data

    dataset = DiskTrajDataset(str(tmp_path), "run")
    why = "epoch 0 trains before any collection (start_collecting_at_epoch = 5)"
    with pytest.raises(EmptyDatasetError, match=f"{re.escape(why)}, but there is nothing to train on: .*{tmp_path}"):
        require_data(dataset, why)
    _demo_folder(dataset.protected_dir, n=1)  # a file arriving later is found
    require_data(dataset, why)
