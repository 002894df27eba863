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
