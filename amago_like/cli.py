"""Command-line flags shared by the examples, turned into gin bindings."""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
import sys
from typing import TYPE_CHECKING

import gin

from amago_like.config import NOT_CONFIGURABLE, GinBindingError, check_bindings, refusal
from amago_like.io import DiskFullError

if TYPE_CHECKING:
    from amago_like.experiment import Experiment

# the repository root: gin `include 'configs/...'` lines resolve against it from any working directory
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_search_path_added = False

# flag -> gin parameter it binds (only when the flag is given)
FLAG_BINDINGS = {
    "epochs": "Experiment.epochs",
    "parallel_actors": "Experiment.parallel_actors",
    "env_mode": "Experiment.env_mode",
    "mixed_precision": "Experiment.mixed_precision",
    "max_seq_len": "Experiment.max_seq_len",
    "batch_size": "Experiment.batch_size",
    "seed": "Experiment.seed",
    "log_to_wandb": "Experiment.log_to_wandb",
    "mode": "Experiment.role",
}


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--run_name", default=None, help="name of the run folder (default: derived from the env)")
    parser.add_argument("--buffer_dir", default="runs", help="root folder of run folders and replay buffers")
    parser.add_argument("--configs", nargs="*", default=None, help="gin files, applied in order")
    parser.add_argument(
        "--gin", action="append", default=[], help='extra gin binding, e.g. --gin "Experiment.epochs=10"'
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--parallel_actors", type=int, default=None)
    parser.add_argument("--env_mode", choices=["sync", "async"], default=None)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--max_seq_len", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--log_to_wandb",
        action="store_true",
        default=None,
        help="log to wandb (WANDB_MODE=offline works without a key)",
    )
    parser.add_argument(
        "--mode",
        choices=["both", "collect", "learn"],
        default=None,
        help="actor/learner split: run collect-only and learn-only processes with the same --run_name and --buffer_dir",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of the run")
    return parser


def flag_bindings(args: argparse.Namespace) -> list[str]:
    return [
        f"{param} = {getattr(args, flag)!r}"
        for flag, param in FLAG_BINDINGS.items()
        if getattr(args, flag, None) is not None
    ]


def apply_gin(configs: list[str], bindings: list[str]) -> None:
    """Parse gin files then bindings (later ones win); a bad one fails at once, naming it."""
    import amago_like  # noqa: F401  (registers every configurable before parsing)

    global _search_path_added
    if not _search_path_added:
        gin.add_config_file_search_path(REPO_ROOT)
        _search_path_added = True

    for path in configs:
        try:
            gin.parse_config_file(path)
        except (ValueError, KeyError, OSError, SyntaxError) as e:
            raise GinBindingError(f"in gin file {path}: {e}{_gin_hint(str(e))}") from None
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except (ValueError, KeyError, SyntaxError) as e:
            raise GinBindingError(f"bad gin binding {binding!r}: {e}{_gin_hint(str(e), binding)}") from None
    check_bindings()  # a binding its configurable's parent would override fails now, not silently


def is_bound(parameter: str) -> bool:
    """Whether the parsed gin config binds ``parameter`` (e.g. "Experiment.max_seq_len")."""
    try:
        gin.query_parameter(parameter)
    except ValueError:
        return False
    return True


def _gin_hint(message: str, binding: str = "") -> str:
    """What to write instead, for gin's "no such configurable / parameter" errors ("" for others)."""
    registry = gin.config._REGISTRY  # gin has no public listing of what is registered
    if (m := re.search(r"No configurable matching '([\w.]+)'", message)) and m.group(1) in NOT_CONFIGURABLE:
        param = re.search(rf"{m.group(1)}\.(\w+)", binding)
        return f"\nFix: {refusal(m.group(1), param.group(1)) if param else 'bind ' + NOT_CONFIGURABLE[m.group(1)]}."
    if m := re.search(r"No configurable matching '([\w.]+)'", message):
        names = sorted({sel.split(".")[-1] for sel, _ in registry.items() if not sel.startswith("gin.")})
        close = difflib.get_close_matches(m.group(1).split(".")[-1], names, n=3)
        examples = ", ".join(close or ["Experiment", "DiskTrajDataset", "TformerTrajEncoder"])
        return f"\nFix: name a registered configurable (a @gin.configurable of amago_like), e.g. {examples}."
    if m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message):
        try:
            fn = registry.get_match(m.group(1)).wrapped
            params = [
                p for p in inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters if p != "self"
            ]
        except (KeyError, ValueError, TypeError, AttributeError):
            return ""
        close = difflib.get_close_matches(m.group(2), params, n=1)
        did_you_mean = f"did you mean {m.group(1)}.{close[0]}? " if close else ""
        return f"\nFix: {did_you_mean}{m.group(1)} takes {', '.join(params)}."
    return ""


def configure_from_args(args: argparse.Namespace, default_configs: list[str], extra_bindings: list[str] = ()) -> None:
    """Apply ``--configs`` (or ``default_configs``), then the flags, then ``--gin``; exit with the error on a bad one."""
    configs = [os.path.abspath(c) for c in args.configs] if args.configs is not None else default_configs
    try:
        apply_gin(configs, flag_bindings(args) + list(extra_bindings) + args.gin)
    except GinBindingError as e:
        sys.exit(f"error: {e}")


def run(experiment: Experiment, resume: bool = False) -> dict[str, float]:
    """start -> (resume) -> learn (which ends with a checkpoint) -> close; returns the last epoch's metrics.

    A full disk stops the run with DiskFullError instead of dropping trajectories: before it is raised,
    the training state is checkpointed if the disk still takes that (the error says whether it did), so
    ``--resume`` continues from there once space is freed. Resuming is ``Experiment.load_latest_checkpoint``,
    as from Python: a checkpoint that does not fit the configured model raises CheckpointError and leaves the
    run's own ``config.gin`` in place; other bindings (e.g. more ``--epochs``) write the new ``config.gin``
    and keep the one that made the epochs so far as ``config.until_epoch_<N>.gin``; the rows logged after the
    checkpoint move from ``metrics.jsonl`` to ``metrics.after_epoch_<N>.jsonl``. Without ``resume``, a run
    folder that already holds checkpoints raises RunExistsError before anything is written (collect / learn
    roles share a folder on purpose and are exempt).
    """
    if not resume:  # before start() rewrites the run's config.gin
        experiment.check_not_overwriting()
    try:
        experiment.start()
        if resume:
            epoch = experiment.load_latest_checkpoint()
            print(f"resuming from epoch {epoch}" if epoch is not None else "no checkpoint to resume: starting fresh")
        try:
            return experiment.learn()
        except DiskFullError as e:
            stopped = DiskFullError(f"{e}\n{_checkpoint_before_stopping(experiment)}")
            stopped.errno = e.errno
            raise stopped from None
    finally:
        experiment.close()


def _checkpoint_before_stopping(experiment: Experiment) -> str:
    """Try to checkpoint a run stopped by a full disk; says what happened."""
    if experiment.role == "collect":
        return "collect-only run: nothing to checkpoint; the trajectories written so far are kept"
    if experiment.epoch in experiment.checkpoint_epochs():
        return f"the checkpoint of epoch {experiment.epoch} is already on disk"
    try:
        path = experiment.save_checkpoint()
    except OSError:
        kept = experiment.checkpoint_epochs()
        return f"no checkpoint could be written either; the newest complete one is epoch {kept[-1] if kept else None}"
    return f"checkpointed the training state before stopping: {path}"
