"""The checks of :class:`~amago_like.experiment.Experiment`'s arguments, run when it is built: a gin binding that
would do nothing, a choice, integer or number out of range, a dataset that is not one, a folder that cannot be
written. They fail before any env steps or training, each naming ``Experiment.<argument>``."""

from __future__ import annotations

import os
from typing import Any

from amago_like.checks import check_writable_dir
from amago_like.config import check_arguments, check_bindings
from amago_like.data.dataset import PADDED_SAMPLING, RLDataset
from amago_like.data.trajectory import FORMATS
from amago_like.envs.exploration import AUTO_EXPLORATION
from amago_like.envs.vector import ENV_MODES, check_envs_per_worker
from amago_like.learner import compile_mode
from amago_like.overlap import check_overlap

MIXED_PRECISION = ("no", "fp16", "bf16")
ROLES = ("both", "collect", "learn")
# the arguments' checks: choices, integers (minimum; None: any; "none": None allowed, else >= 1), numbers
CHOICES = dict(env_mode=ENV_MODES, save_trajs_as=FORMATS, padded_sampling=PADDED_SAMPLING,
               mixed_precision=MIXED_PRECISION, role=ROLES)  # fmt: skip
INTS = dict(max_seq_len=None, batch_size=1, batches_per_update=1, parallel_actors=1, epochs=1, dloader_workers=0,
            train_timesteps_per_epoch=0, train_batches_per_epoch=0, val_timesteps_per_epoch=0, torch_threads="none",
            max_bad_updates_in_a_row=1, traj_save_len="none", keep_checkpoints="none")  # fmt: skip
NUMBERS = ("learning_rate", "grad_clip", "l2_coeff")


def check_experiment_arguments(arguments: dict[str, Any]) -> None:
    """Check Experiment's ``arguments`` (its ``__init__``'s locals), raising the first problem found."""
    max_seq_len, dataset, role = arguments["max_seq_len"], arguments["dataset"], arguments["role"]
    ckpt_base_dir, run_name = arguments["ckpt_base_dir"], arguments["run_name"]
    check_bindings()  # a binding that would do nothing fails here, also when gin was parsed without the CLI
    check_arguments("Experiment", arguments, CHOICES, INTS, NUMBERS)
    if max_seq_len < 2:
        raise ValueError(
            f"Experiment.max_seq_len must be >= 2 (a timestep and the next one), got {max_seq_len}; "
            "sequences shorter than that hold no transition to learn from"
        )
    if not isinstance(dataset, RLDataset):
        raise TypeError(f"Experiment.dataset must be an RLDataset (e.g. DiskTrajDataset), got {type(dataset)}")
    # fail before any env steps or training, not at the first file written an epoch later
    check_writable_dir(os.path.join(ckpt_base_dir, run_name), "the run folder")
    check_overlap(arguments)
    check_envs_per_worker(arguments["async_envs_per_worker"], arguments["env_mode"], "Experiment.async_envs_per_worker")
    compile_mode(arguments["torch_compile"])  # True, False or a torch.compile mode
    wrapper = arguments["exploration_wrapper_type"]
    if isinstance(wrapper, str) and wrapper != AUTO_EXPLORATION:
        raise ValueError(f"Experiment.exploration_wrapper_type must be {AUTO_EXPLORATION!r}, None or an "
                         f"ExplorationWrapper class such as @EpsilonGreedy, got {wrapper!r}")  # fmt: skip
    if arguments["env_mode"] == "already_vectorized" and wrapper not in (None, AUTO_EXPLORATION):
        name = getattr(wrapper, "__name__", wrapper)  # a functools.partial from Python has none
        raise ValueError(f"Experiment.exploration_wrapper_type = {name} goes around single envs, not an "
                         "already vectorized one: use env_mode 'sync' or 'async', or set it to None")  # fmt: skip
    decay_to = arguments["lr_decay_to"]
    if decay_to is not None and not (isinstance(decay_to, (int, float)) and 0.0 <= decay_to <= 1.0):
        raise ValueError(f"Experiment.lr_decay_to must be None (no decay) or a fraction of learning_rate in [0, 1], "
                         f"got {decay_to!r}")  # fmt: skip
    if role != "learn" and dataset.save_new_trajs_to is not None:
        check_writable_dir(dataset.save_new_trajs_to, "the trajectory buffer folder")
