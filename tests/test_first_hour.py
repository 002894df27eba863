"""Issue 23, the first hour of a new user: help, progress without a terminal, plots, bad bindings,
demonstration folders, wandb without a key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
def _toy():
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_toy", os.path.join(REPO_ROOT, "examples", "toy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        _toy().main(["--buffer_dir", str(buffer_dir), "--gin", binding])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"error: bad gin binding {binding!r}: ") and message in err
    assert not buffer_dir.exists()  # nothing was built


def test_wrong_type_in_a_config_file_names_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "mine.gin"
    config.write_text("include 'configs/bandit.gin'\n\nExperiment.epochs = 3\nTformerTrajEncoder.n_layers = '2'\n")
    with pytest.raises(SystemExit) as exit_info:
        _toy().main(["--buffer_dir", str(tmp_path / "runs"), "--configs", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: in gin file {config} line 4: TformerTrajEncoder.n_layers must be an integer, got '2' (str); "
        "bind a whole number without quotes or decimals, e.g. TformerTrajEncoder.n_layers = 3"
    )


def test_unparsable_binding_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _toy().main(["--buffer_dir", str(tmp_path / "runs"), "--gin", "Experiment.epochs = (3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "close every bracket" in err


def test_references_and_macros_are_not_type_checked():
    from amago_like.cli import apply_gin

    apply_gin([], ["BATCH = 8", "Experiment.batch_size = %BATCH", "Experiment.tstep_encoder_type = @FFTstepEncoder"])


def test_failed_start_leaves_no_empty_run_folder(tmp_path):
    buffer_dir = tmp_path / "runs"
    with pytest.raises(ValueError, match="max_seq_len must be >= 2"):
        _toy().main(["--buffer_dir", str(buffer_dir), "--max_seq_len", "1"])
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
        _toy().main(["--buffer_dir", str(tmp_path / "runs"), "--log_to_wandb"])
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


def test_init_wandb_turns_the_missing_key_into_one_line(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from amago_like.logging import WandbSetupError, init_wandb

    _no_wandb_key(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with pytest.raises(WandbSetupError, match="WANDB_MODE=offline") as info:
        init_wandb(project="p", dir=str(tmp_path), mode="online")
    assert "\n" not in str(info.value)
