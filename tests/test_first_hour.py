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
