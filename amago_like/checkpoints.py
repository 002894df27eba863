"""An experiment's checkpoints and resume: saving the training state, putting a run back from a checkpoint, the
latest policy an actor/learner split hands over, and the refusal to train a fresh run over a run's checkpoints.

:class:`ExperimentCheckpoints` holds these methods of :class:`~amago_like.experiment.Experiment`, which inherits
them (a subclass of Experiment overrides them as before). A training-state checkpoint holds the agent's weights,
the learner's optimizer and LR schedule, the counters (epoch, frames, updates), the training rollout's
exploration schedule and every RNG state; the files and where they lie are :class:`~amago_like.run_dir.RunDir`'s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from amago_like.config import literal, read_arguments
from amago_like.learner import draw_seed, on_main_process, restore_rng_state, rng_state
from amago_like.run_dir import CheckpointError, RunExistsError, average_weights, load_weights, read_checkpoint


class ExperimentCheckpoints:
    """The checkpoint methods of :class:`~amago_like.experiment.Experiment`. They use its run folder
    (``run_folder``), parts (``accelerator``, ``is_main``, ``DEVICE``, ``learner``, ``policy``, ``train_rollout``,
    ``dataset``), counters (``epoch``, ``total_frames``, ``grad_updates``, ``bad_updates``), settings (``role``,
    ``parallel_actors``) and state (``_started``, ``_resume_pending``, ``_feed``)."""

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_dir(self) -> str:
        return self.run_folder.ckpts

    def checkpoint_epochs(self) -> list[int]:
        """Epochs with a complete training-state checkpoint."""
        return self.run_folder.checkpoint_epochs()

    def save_checkpoint(self) -> str:
        """Full training state to ``ckpts/training_states/epoch_N`` and policy weights to
        ``ckpts/policy_weights/policy_epoch_N.pt`` (see :meth:`RunDir.write_checkpoint`). Collective: the main
        process writes, and if it fails every rank raises instead of waiting for it."""
        final = self.run_folder.state_dir(self.epoch)
        state = {
            "agent": self.policy.state_dict(),
            **self.learner.state_dict(),
            "counters": {
                "epoch": self.epoch,
                "total_frames": self.total_frames,
                "grad_updates": self.grad_updates,
                "bad_updates": self.bad_updates,
                "wall_seconds": self.wall_seconds(),
            },
            "rollout": self.train_rollout.state_dict(),
            "rng": rng_state(self.DEVICE),
        }
        write = lambda: self.run_folder.write_checkpoint(self.epoch, state, state["agent"])  # noqa: E731
        return on_main_process(self.accelerator, write, f"checkpoint {final}") or final

    def load_checkpoint_from_path(self, path: str, resume_training_state: bool = True) -> None:
        """Load a training-state folder (``.../epoch_N``) or a policy-weights file (``.pt``)."""
        file, state, weights = read_checkpoint(path)
        load_weights(self.policy, weights, file)
        if not (resume_training_state and "optimizer" in state):
            return
        self.learner.load_state_dict(state)
        c = state["counters"]
        self.epoch, self.total_frames = c["epoch"], c["total_frames"]
        self.learner.grad_updates, self.learner.bad_updates = c["grad_updates"], c.get("bad_updates", 0)
        self._feed.restart()  # a learner's frames go on from the checkpoint's count (an overlapped one's updates too)
        self._clock_origin = time.monotonic() - c.get("wall_seconds", 0.0)  # wall seconds go on from the checkpoint's
        # checkpoints written before the rollout had its own state: actors step in lockstep
        per_actor = self.total_frames // (self.parallel_actors * self.accelerator.num_processes)
        self.train_rollout.load_state_dict(state.get("rollout", {"explore_steps": per_actor}))
        restore_rng_state(state["rng"], self.DEVICE)
        self._resume_pending = True

    def load_checkpoint(self, epoch: int, resume_training_state: bool = True) -> None:
        if epoch not in self.checkpoint_epochs():
            raise CheckpointError(
                f"no checkpoint for epoch {epoch} in {self.ckpt_dir}; available epochs: {self.checkpoint_epochs()}"
            )
        self.load_checkpoint_from_path(self.run_folder.state_dir(epoch), resume_training_state)

    def load_latest_checkpoint(self) -> int | None:
        """Resume from the newest complete checkpoint of this run; returns its epoch (None: fresh start).
        A checkpoint that does not fit puts the run's own config.gin back and raises CheckpointError."""
        epochs = self.checkpoint_epochs()
        if not epochs:
            return None
        try:
            self.load_checkpoint(epochs[-1])
        except CheckpointError:
            if self._started and self.is_main:  # start() wrote the config of the model that does not fit
                self.run_folder.restore_config()
            raise
        return epochs[-1]

    def load_average_weights(self, paths: Sequence[str]) -> None:
        """Load the mean of several checkpoints' policy weights (training-state folders or ``.pt`` files),
        which evens out the swings between single ones (docs/RESULTS.md, ML1 reach-v3)."""
        source, weights = average_weights(list(paths))
        load_weights(self.policy, weights, source)

    def write_latest_policy(self) -> None:
        if self.is_main:
            self.run_folder.write_latest_policy(self.policy.state_dict())

    def read_latest_policy(self) -> bool:
        """Load ``ckpts/latest/policy.pt`` if a learner has written one; returns whether it did."""
        if not os.path.exists(self.run_folder.latest_policy):
            return False
        self.load_checkpoint_from_path(self.run_folder.latest_policy, resume_training_state=False)
        return True

    # ------------------------------------------------------------------ fresh run or resume
    def settle_seed(self) -> None:
        """Every run is seeded. Without a seed, a run folder holding checkpoints to resume keeps the seed its
        config.gin recorded (so the resumed epochs reset their envs as the run would have), and any other run
        draws one; either is printed, and start() records it in config.gin. (Collectors of an actor/learner
        split draw their own: sharing the learner's would make them play the same episodes.)"""
        if self.seed is not None:
            return
        recorded = None
        if self._owns_run and self.checkpoint_epochs() and os.path.exists(self.run_folder.config):
            with open(self.run_folder.config) as f:
                recorded = read_arguments(f.read()).get("seed")
        self.seed = literal(recorded) if recorded not in (None, "None") else None
        how = "the run's own, from its config.gin" if self.seed is not None else "drawn"
        if self.seed is None:
            self.seed = draw_seed(self.accelerator)
        if self.verbose and self.is_main:
            print(f"seed {self.seed} ({how}; --seed {self.seed} repeats it)")

    def _begin(self) -> int | None:
        """Fresh run: refuse to train over a run's checkpoints. Resumed (returns the epoch): move the rows logged
        after the checkpoint aside, so every series has one timeline (the same for the CLI and for Python)."""
        resumed, self._resume_pending = self._resume_pending, False
        if self.epoch == 0 and not resumed:
            try:
                self.check_not_overwriting()
            except RunExistsError:
                if self.is_main:
                    self.run_folder.restore_config()
                raise
        if resumed and self.is_main and self.role != "collect":
            self.run_folder.set_aside_metrics_after(self.epoch, self.grad_updates)
        return self.epoch if resumed else None

    def check_not_overwriting(self) -> None:
        """RunExistsError if training from epoch 0 would overwrite this run folder's checkpoints.
        Collect / learn roles share a folder on purpose and are exempt (not an overlapped run's learner)."""
        if self.epoch == 0 and self._owns_run:
            self.run_folder.check_fresh()

    @property
    def _owns_run(self) -> bool:
        """A run that is its own (not one role of a split the user started): sequential, or overlapped's learner."""
        return self.role == "both" or (getattr(self, "overlap", False) and self.role == "learn")
