"""Command-line flags shared by the examples, turned into gin bindings (parsed by ``config.apply_gin``),
``run``: start, resume, learn, close, and ``train``: the examples' Experiment on an env's train and test splits."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gin

# gin parsing lives in config.py; these names stay importable from here
from amago_like.config import REPO_ROOT, GinBindingError, GinTypeError, apply_gin, is_bound, values_as_built  # noqa: F401
from amago_like.io import DiskFullError

if TYPE_CHECKING:
    from amago_like.experiment import Experiment


#: set by an overlapped learner in its collector's environment (amago_like.overlap.PARENT_ENV, which loads torch)
OVERLAP_PARENT_ENV = "AMAGO_LIKE_OVERLAP_LEARNER"

# flag -> gin parameter it binds (only when the flag is given)
FLAG_BINDINGS = {
    "epochs": "Experiment.epochs",
    "parallel_actors": "Experiment.parallel_actors",
    "env_mode": "Experiment.env_mode",
    "envs_per_worker": "Experiment.async_envs_per_worker",
    "mixed_precision": "Experiment.mixed_precision",
    "max_seq_len": "Experiment.max_seq_len",
    "batch_size": "Experiment.batch_size",
    "seed": "Experiment.seed",
    "log_to_wandb": "Experiment.log_to_wandb",
    "mode": "Experiment.role",
    "overlap": "Experiment.overlap",
    "collectors": "Experiment.overlap_collectors",
    "demos": "DiskTrajDataset.demo_dirs",
}


def _envs_per_worker(text: str) -> int | str:
    """``--envs_per_worker``: "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}")
    return value


def add_common_args(parser: argparse.ArgumentParser, default_configs: str = "") -> argparse.ArgumentParser:
    """The flags every example shares. ``default_configs``: the gin files used without ``--configs``, as the
    help text should name them (e.g. "configs/metaworld/quick.gin")."""
    from_config = "default: the value in the gin config"
    parser.add_argument(
        "--run_name", default=None, help="name of the run folder inside --buffer_dir (default: derived from the env)"
    )
    parser.add_argument(
        "--buffer_dir",
        default="runs",
        metavar="DIR",
        help="root folder of run folders and their replay buffers, relative to the working directory "
        "(default: %(default)s/)",
    )
    parser.add_argument(
        "--configs",
        nargs="*",
        default=None,
        metavar="FILE",
        help="gin files, applied in order (default: " + (default_configs or "the example's own") + ")",
    )
    parser.add_argument(
        "--gin",
        action="append",
        default=[],
        metavar="BINDING",
        help='extra gin binding, applied after the files and flags; repeatable, e.g. --gin "Experiment.epochs = 10"',
    )
    parser.add_argument(
        "--epochs", type=int, default=None, metavar="N", help=f"training epochs (Experiment.epochs; {from_config})"
    )
    parser.add_argument(
        "--parallel_actors",
        type=int,
        default=None,
        metavar="N",
        help=f"environments stepped side by side per process (Experiment.parallel_actors; {from_config})",
    )
    parser.add_argument(
        "--env_mode",
        choices=["sync", "async"],
        default=None,
        help="step the actors' envs in this process (sync) or in worker subprocesses (async) "
        f"(Experiment.env_mode; {from_config})",
    )
    parser.add_argument(
        "--envs_per_worker",
        type=_envs_per_worker,
        default=None,
        metavar="N|auto",
        help="envs each async worker process steps; auto: one worker per CPU "
        f"(Experiment.async_envs_per_worker; {from_config})",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help=f"autocast precision of forward passes; bf16 needs a GPU to pay off (Experiment.mixed_precision; {from_config})",
    )
    parser.add_argument(
        "--max_seq_len",
        type=int,
        default=None,
        metavar="L",
        help=f"timesteps of context the model sees and trains on (Experiment.max_seq_len; {from_config})",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        metavar="B",
        help=f"sequences per gradient update (Experiment.batch_size; {from_config})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of python, numpy, torch and the envs (Experiment.seed; {from_config}; if unset, a resume keeps "
        "the run's seed and a fresh run draws one, prints it and records it in config.gin)",
    )
    parser.add_argument(
        "--log_to_wandb",
        action="store_true",
        default=None,
        help="also log to wandb (needs an API key: `wandb login`, or set WANDB_MODE=offline to log without one)",
    )
    parser.add_argument(
        "--mode",
        choices=["both", "collect", "learn"],
        default=None,
        help="actor/learner split: run collect-only and learn-only processes with the same --run_name and "
        "--buffer_dir (default: both)",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        default=None,
        help="collect while learning: this process trains and spawns a collector (the same command with --mode "
        "collect; --collectors N for more) that keeps stepping the envs meanwhile, paced to the same env steps and "
        "updates as the sequential run (Experiment.overlap; default: off, collect then train each epoch)",
    )
    parser.add_argument(
        "--collectors",
        type=int,
        default=None,
        metavar="N",
        help="with --overlap: spawn N collectors of --parallel_actors envs each (Experiment.overlap_collectors; "
        f"{from_config}, 1 unless set)",
    )
    parser.add_argument(
        "--demos",
        nargs="+",
        type=os.path.abspath,
        default=None,
        metavar="DIR",
        help="folders of trajectory files (e.g. from python -m amago_like.evaluate RUN --save_trajs_to DIR) to sample "
        "along with the run's buffer, never deleted (DiskTrajDataset.demo_dirs; default: none)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of the run")
    return parser


def flag_bindings(args: argparse.Namespace) -> list[str]:
    return [
        f"{param} = {getattr(args, flag)!r}"
        for flag, param in FLAG_BINDINGS.items()
        if getattr(args, flag, None) is not None
    ]


class UsageExit(SystemExit):
    """Exit status 2 (a usage error, as argparse uses) whose str() is the message; the message is printed
    to stderr before it is raised, since Python prints nothing for an integer exit status."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def configure_from_args(
    args: argparse.Namespace, default_configs: list[str], extra_bindings: list[str] = (), run_dir: str | None = None
) -> None:
    """Apply ``--configs`` (or ``default_configs``), then the flags, then ``--gin``. A bad one prints one line
    (``error: <file or binding>: <what is wrong>; <the fix>``) and exits with status 2, before anything is built.

    With ``--resume``, a run (``run_dir``) written before a default of the model changed is rebuilt as it was: the
    values of config.CHANGED_DEFAULTS it was built with are bound first, under the rest."""
    configs = [os.path.abspath(c) for c in args.configs] if args.configs is not None else default_configs
    recorded = os.path.join(run_dir, "config.gin") if run_dir else None
    old_values = values_as_built(recorded) if args.resume and recorded and os.path.exists(recorded) else []
    if getattr(args, "overlap", None) and args.mode in ("collect", "learn") and OVERLAP_PARENT_ENV not in os.environ:
        _usage_error(f"--overlap with --mode {args.mode}: an overlapped run is one learner that spawns its own "
                     "collector; drop --mode for it, or drop --overlap to start --mode collect / learn processes "
                     "yourself")  # fmt: skip
    try:
        apply_gin([], old_values)
        apply_gin(configs, flag_bindings(args) + list(extra_bindings) + args.gin)
    except GinBindingError as e:
        _usage_error(str(e))
    if is_bound("Experiment.log_to_wandb") and gin.query_parameter("Experiment.log_to_wandb") is True:
        from amago_like.logging import wandb_key_problem

        problem = wandb_key_problem()  # before the run folder is made, not at wandb.init after start-up
        if problem:
            _usage_error(problem)


def _usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise UsageExit(f"error: {message}") from None


def train(
    make_env: Callable[..., Any], buffer_dir: str, run_name: str, resume: bool = False
) -> tuple[Experiment, dict[str, float]]:
    """An Experiment (everything but its envs, run folder and buffer from gin) that trains on
    ``make_env(split="train")`` and evaluates on ``make_env(split="test")`` (held-out tasks where the env has them),
    through :func:`run`; returns it and its last metrics. A start that fails leaves no empty run folder."""
    from amago_like.checks import removed_if_left_empty
    from amago_like.data import DiskTrajDataset
    from amago_like.experiment import Experiment

    with removed_if_left_empty(os.path.join(buffer_dir, run_name), buffer_dir):
        experiment = Experiment(
            run_name=run_name,
            ckpt_base_dir=buffer_dir,
            dataset=DiskTrajDataset(dset_root=buffer_dir, dset_name=run_name),
            make_train_env=functools.partial(make_env, split="train"),
            make_val_env=functools.partial(make_env, split="test"),
        )
        return experiment, run(experiment, resume=resume)


def run(experiment: Experiment, resume: bool = False) -> dict[str, float]:
    """start -> (resume) -> learn (which ends with a checkpoint) -> close (-> a DDP rank leaves its process group);
    returns the last epoch's metrics.

    A full disk stops the run with DiskFullError instead of dropping trajectories: before it is raised,
    the training state is checkpointed if the disk still takes that (the error says whether it did), so
    ``--resume`` continues from there once space is freed. Resuming is ``Experiment.load_latest_checkpoint``,
    as from Python: a checkpoint that does not fit the configured model raises CheckpointError and leaves the
    run's own ``config.gin`` in place; other bindings (e.g. more ``--epochs``) write the new ``config.gin``
    and keep the one that made the epochs so far as ``config.until_epoch_<N>.gin``; the rows logged after the
    checkpoint move from ``metrics.jsonl`` to ``metrics.after_epoch_<N>.jsonl``. Without ``resume``, a run
    folder that already holds checkpoints raises RunExistsError before anything is written (collect / learn
    roles share a folder on purpose and are exempt). With ``--overlap`` the collector this learner spawns runs
    while it learns and is ended with it (:func:`amago_like.overlap.overlapped`).
    """
    from amago_like.overlap import overlapped  # (loads torch, which --help does without)

    if not resume:  # before start() rewrites the run's config.gin
        experiment.check_not_overwriting()
    try:
        with overlapped(experiment):  # --overlap: the learner's collector runs meanwhile
            experiment.start()
            if resume:
                epoch = experiment.load_latest_checkpoint()
                if experiment.is_main:
                    print(
                        f"resuming from epoch {epoch}"
                        if epoch is not None
                        else "no checkpoint to resume: starting fresh"
                    )
            try:
                metrics = experiment.learn()
            except DiskFullError as e:
                stopped = DiskFullError(f"{e}\n{_checkpoint_before_stopping(experiment)}")
                stopped.errno = e.errno
                raise stopped from None
    finally:
        experiment.close()
    experiment.learner.leave_process_group()  # after a run that ended well only
    return metrics


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
