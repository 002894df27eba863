"""``Experiment``: the gin-configurable facade of a training run and its epoch loop.

Each epoch: evaluate (every ``val_interval``) -> collect ``train_timesteps_per_epoch`` steps per actor into the
disk buffer -> ``train_batches_per_epoch`` gradient batches -> checkpoint (every ``ckpt_interval``) -> log.
The parts it builds do the work: ``rollout.Rollout`` acts, ``learner.Learner`` updates, ``run_dir.RunDir``
owns the run folder, the agent owns the objective. Override points (as in the reference Experiment):
``init_checkpoints``, ``init_dsets``, ``init_envs``, ``init_model``, ``init_optimizer``, ``init_logger``,
``init_dloaders``, the mask hooks ``edit_actor_mask`` / ``edit_critic_mask``, ``compute_loss``, ``train_step``.
Experiment inherits its checkpoint and resume methods from ``checkpoints.ExperimentCheckpoints`` and its log rows,
epoch lines and summary from ``logging.ExperimentLogging``; ``arguments`` checks its arguments.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import gin
import gymnasium as gym
import torch
from accelerate import Accelerator

from amago_like.agents import Agent
from amago_like.arguments import check_experiment_arguments
from amago_like.callbacks import Callback
from amago_like.checkpoints import ExperimentCheckpoints
from amago_like.config import describe_arguments
from amago_like.data.batches import Batch, make_dataloader
from amago_like.data.dataset import DataFeed, RLDataset, require_data
from amago_like.envs.exploration import ExplorationWrapper
from amago_like.envs.vector import check_same_observations, close_envs, env_relabeler, make_vector_env
from amago_like.learner import DivergenceError, Learner, adamw, planned_updates, seed_rngs
from amago_like.logging import ExperimentLogging, RunLogger, init_wandb, progress, timed
from amago_like.nets.traj_encoders import TformerTrajEncoder, TrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder, TstepEncoder
from amago_like.overlap import ROLE_SETTINGS, attach, role_settings, run_files, run_seed  # noqa: F401  (ROLE_SETTINGS)
from amago_like.plots import plot_metrics, plot_metrics_in_background
from amago_like.rollout import KeptEpisodes, Rollout, RolloutStats, explores_with, summarize_episodes, with_exploration
from amago_like.run_dir import CheckpointError, RunDir, RunExistsError
from amago_like.threads import set_torch_threads

__all__ = ["CheckpointError", "DivergenceError", "Experiment", "RunExistsError", "summarize_episodes"]

EnvFactory = Callable[[], gym.Env] | Sequence[Callable[[], gym.Env]]


@gin.configurable
class Experiment(ExperimentCheckpoints, ExperimentLogging):
    """A meta-RL training run. Every argument is bindable from gin (``Experiment.epochs = 10``).

    ``make_train_env`` / ``make_val_env``: one env factory for every actor, or a list of ``parallel_actors``
    factories (a list gives manual assignment across actors). ``async_envs_per_worker``: envs stepped by each worker
    process of ``env_mode="async"`` ("auto": one worker per CPU). ``torch_threads``: see :mod:`amago_like.threads`."""

    def __init__(
        self,
        run_name: str,
        ckpt_base_dir: str,
        max_seq_len: int,
        dataset: RLDataset,
        make_train_env: EnvFactory,
        make_val_env: EnvFactory,
        val_timesteps_per_epoch: int,
        tstep_encoder_type: type[TstepEncoder] = FFTstepEncoder,
        traj_encoder_type: type[TrajEncoder] = TformerTrajEncoder,
        agent_type: type[Agent] = Agent,
        parallel_actors: int = 12,
        env_mode: str = "async",
        async_env_mp_context: str | None = None,
        async_envs_per_worker: int | str = "auto",
        exploration_wrapper_type: type[ExplorationWrapper] | str | None = "auto",
        sample_actions: bool = True,
        eval_sample_actions: bool | None = None,
        force_reset_train_envs_every: int | None = None,
        log_to_wandb: bool = False,
        wandb_project: str = "amago_like",
        wandb_entity: str | None = None,
        wandb_group_name: str | None = None,
        verbose: bool = True,
        log_interval: int = 300,
        traj_save_len: int | None = None,
        stagger_traj_file_lengths: bool = True,
        has_dset_edit_rights: bool = True,
        save_trajs_as: str = "npz",
        padded_sampling: str = "none",
        dloader_workers: int = 0,
        epochs: int = 1000,
        start_learning_at_epoch: int = 0,
        start_collecting_at_epoch: int = 0,
        train_timesteps_per_epoch: int = 1000,
        train_batches_per_epoch: int = 1000,
        val_interval: int | None = 20,
        ckpt_interval: int | None = 50,
        always_save_latest: bool = True,
        always_load_latest: bool = False,
        batch_size: int = 24,
        batches_per_update: int = 1,
        learning_rate: float = 1e-4,
        critic_loss_weight: float = 10.0,
        lr_warmup_steps: int = 500,
        lr_decay_to: float | None = None,
        grad_clip: float = 1.0,
        l2_coeff: float = 1e-3,
        mixed_precision: str = "no",
        torch_compile: bool | str = False,
        seed: int | None = None,
        keep_checkpoints: int | None = None,
        callbacks: tuple[Callback, ...] = (),
        max_bad_updates_in_a_row: int = 20,
        wait_for_data_seconds: float = 600.0,
        role: str = "both",
        torch_threads: int | None = None,
        overlap: bool = False,
        overlap_updates_per_env_step: float | None = None,
        overlap_publish_every: int | None = None,
        overlap_collectors: int = 1,
    ):
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        check_experiment_arguments(arguments)
        self._arguments = dict(arguments)  # recorded in config.gin (amago_like.evaluate), with the seed start() sets
        arguments.update(role_settings(role, overlap))  # amago_like.overlap: what each process's role changes
        vars(self).update({k: v for k, v in arguments.items() if k != "critic_loss_weight"})
        self._critic_loss_weight = critic_loss_weight
        # val / test rollouts: None follows sample_actions; False acts with the policy's mode
        self.eval_sample_actions = sample_actions if eval_sample_actions is None else eval_sample_actions
        # long rollouts are saved in pieces; staggering only matters when there are pieces
        self.stagger_traj_file_lengths = stagger_traj_file_lengths and traj_save_len is not None
        self.callbacks = list(callbacks)
        self.run_dir = os.path.join(ckpt_base_dir, run_name)
        self.run_folder = RunDir(self.run_dir, keep_checkpoints, *run_files(role, overlap))
        self.epoch = self.total_frames = 0
        # of wall_seconds (a resume moves it back by the checkpoint's seconds); monotonic, so that a system clock
        # set back (a VM's clock sync) never runs wall_seconds backwards
        self._clock_origin = time.monotonic()
        self._feed = DataFeed(dataset)
        self._started, self._resume_pending, self._collector = False, False, None  # (an overlapped run's collector)

    # ================================================================== set-up (override points)
    def start(self) -> None:
        """Build the accelerator, run folder, dataset, envs, agent and optimizer; write the operative config."""
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision, gradient_accumulation_steps=self.batches_per_update
        )
        set_torch_threads(self.torch_threads, self.role, self.accelerator.num_processes)
        self.settle_seed()
        self.seed = run_seed(self.seed, self.role, self.overlap)  # each collector of an overlapped run its own
        seed_rngs(self.seed + self.accelerator.process_index)
        self.init_checkpoints()
        self.init_dsets()
        self.init_envs()
        self.init_model()
        self.init_logger()
        self._started = True
        attach(self)  # --overlap: the learner's or the spawned collector's side
        if self.verbose and self.is_main:
            print(self.summary())

    def init_checkpoints(self) -> None:
        """Create the run folder's checkpoint folders (main process)."""
        if self.is_main:
            self.run_folder.make_folders()
        self.accelerator.wait_for_everyone()

    def init_dsets(self) -> None:
        """Prepare the dataset: only the main process may delete buffer files."""
        self.dataset.restrict_edit_rights(self.has_dset_edit_rights and self.is_main)

    def make_envs(self, make_env: EnvFactory, save_dir: str | None, record_to: str | None = None, num_envs=None):
        """``num_envs`` (default ``parallel_actors``) envs of ``make_env`` in this run's env mode."""
        # the collectors of an overlapped run share the machine's CPUs, as a DDP run's processes do
        sharing = self.overlap_collectors if self.overlap and self.role == "collect" else None
        return make_vector_env(
            make_env,
            num_envs or self.parallel_actors,
            self.env_mode,
            save_dir,
            self.save_trajs_as,
            self.async_env_mp_context,
            save_every=self.traj_save_len,
            stagger=self.stagger_traj_file_lengths,
            record_to=record_to,
            envs_per_worker=self.async_envs_per_worker,
            processes=sharing,
        )

    def make_rollout(
        self,
        envs: gym.vector.VectorEnv,
        explores: bool = False,
        force_reset_every: int | None = None,
        collects: bool = False,
    ) -> Rollout:
        show = self.verbose and self.is_main
        return Rollout(envs, self.DEVICE, self.caster, show, explores, force_reset_every, collects)

    def init_envs(self) -> None:
        """Training actors (with the exploration wrapper), a :class:`Rollout`; the validation envs' is built on first
        use (:attr:`val_rollout`)."""
        wrapper = None if self.env_mode == "already_vectorized" else self.exploration_wrapper_type
        make_train = with_exploration(self.make_train_env, wrapper)
        num_train = None  # a learner never steps its training envs (they give the spaces and the exploration count)
        if self.role == "learn" and self.env_mode != "already_vectorized":  # one, not parallel_actors idle ones
            num_train, make_train = 1, make_train if callable(make_train) else make_train[:1]
        train_envs = self.make_envs(make_train, self.dataset.save_new_trajs_to, num_envs=num_train)
        explores = explores_with(train_envs, wrapper)
        self.train_rollout = self.make_rollout(train_envs, explores, self.force_reset_train_envs_every, collects=True)
        self.train_rollout.set_run_length(self.epochs * self.train_timesteps_per_epoch)
        self._val_rollout = None
        r = self.train_rollout
        self.obs_space, self.rl2_space, self.action_space = r.obs_space, r.rl2_space, r.action_space
        self.dataset.use_env_relabeler(env_relabeler(train_envs))

    @property
    def val_rollout(self) -> Rollout:
        """The validation envs' :class:`Rollout`, built on first use (a collector, or a run that never validates,
        starts none)."""
        if self._val_rollout is None:
            envs = self.make_envs(self.make_val_env, None)
            check_same_observations(self.train_envs, envs)
            self._val_rollout = self.make_rollout(envs)
        return self._val_rollout

    def init_model(self) -> None:
        """The agent, its optimizer (:meth:`init_optimizer`; none for a collector) and the :class:`Learner`."""
        agent = self.agent_type(
            obs_space=self.obs_space,
            rl2_space=self.rl2_space,
            action_space=self.action_space,
            max_seq_len=self.max_seq_len,
            tstep_encoder_type=self.tstep_encoder_type,
            traj_encoder_type=self.traj_encoder_type,
        )
        agent.critic_loss_weight = self._critic_loss_weight
        agent = agent.to(self.DEVICE)  # before the optimizer: a fused one needs its parameters on their device
        updates = planned_updates(
            self.epochs, self.start_learning_at_epoch, self.train_batches_per_epoch, self.batches_per_update
        )
        self.learner = Learner(
            self.accelerator,
            agent,
            None if self.role == "collect" else self.init_optimizer(agent),  # (building one imports torch._dynamo)
            learning_rate=self.learning_rate, l2_coeff=self.l2_coeff, grad_clip=self.grad_clip,
            lr_warmup_steps=self.lr_warmup_steps, total_updates=updates, lr_decay_to=self.lr_decay_to,
            torch_compile=self.torch_compile, max_bad_updates_in_a_row=self.max_bad_updates_in_a_row,
            verbose=self.verbose,
        )  # fmt: skip

    def init_optimizer(self, policy: Agent) -> torch.optim.Optimizer:
        """The optimizer over ``policy`` (already on its device). Override to switch from AdamW; keep
        ``policy.param_groups(lr)`` to give a learned entropy coefficient its own rate."""
        return adamw(policy, self.learning_rate, self.l2_coeff, self.DEVICE)

    def init_logger(self) -> None:
        """Write the operative config (and the arguments given in Python) and open metrics.jsonl / wandb."""
        wandb_run = None
        if self.is_main:
            recorded = describe_arguments({**self._arguments, "seed": self.seed})
            self.run_folder.write_config((gin.operative_config_str() or gin.config_str()) + recorded)
            if self.log_to_wandb:
                wandb_run = init_wandb(
                    id=self.run_folder.wandb_id(),  # the folder's wandb run: a resume continues it
                    resume="allow",
                    project=self.wandb_project,
                    entity=self.wandb_entity,
                    group=self.wandb_group_name,
                    name=self.run_name,
                    dir=self.run_dir,
                    config={"gin": gin.config_str()},
                )
        self.logger = RunLogger(self.run_dir, wandb_run, self.run_folder.metrics_file)

    def init_dloaders(self) -> torch.utils.data.DataLoader:
        """This epoch's ``train_batches_per_epoch`` batches of padded windows from the dataset."""
        return make_dataloader(
            self.dataset,
            self.max_seq_len,
            self.batch_size,
            self.train_batches_per_epoch,
            self.padded_sampling,
            self.dloader_workers,
        )

    # ================================================================== parts, for callers and subclasses
    is_main = property(lambda self: self.accelerator.is_main_process)
    DEVICE = property(lambda self: self.accelerator.device)
    policy = property(lambda self: self.learner.policy, doc="The agent, unwrapped from DDP.")
    agent = property(lambda self: self.learner.agent, doc="The agent as prepared by accelerate.")
    optimizer = property(lambda self: self.learner.optimizer)
    scheduler = property(lambda self: self.learner.scheduler)
    _train_forward = property(lambda self: self.learner.train_forward)
    train_envs = property(lambda self: self.train_rollout.envs)
    val_envs = property(lambda self: self.val_rollout.envs)
    grad_updates = property(lambda self: self.learner.grad_updates if self._started else 0)
    bad_updates = property(lambda self: self.learner.bad_updates if self._started else 0)

    @property
    def critic_loss_weight(self) -> float:
        """Alias of the agent's ``critic_loss_weight`` (the objective is the agent's)."""
        return self.policy.critic_loss_weight if self._started else self._critic_loss_weight

    @critic_loss_weight.setter
    def critic_loss_weight(self, value: float) -> None:
        self._critic_loss_weight = value
        if self._started:
            self.policy.critic_loss_weight = value

    def caster(self):
        """Context manager for mixed-precision forward passes (a no-op at mixed_precision='no')."""
        return self.accelerator.autocast()

    # ================================================================== acting
    def _rollout_seed(self) -> int:
        return self.seed + 1000 * self.accelerator.process_index + self.epoch

    def _summarize(self, stats: RolloutStats, prefix: str) -> dict[str, float]:
        """Every process's finished episodes, averaged."""
        return summarize_episodes(self.learner.gather(stats.episodes), prefix)

    def collect_new_training_data(self) -> dict[str, float]:
        """Step the training envs ``train_timesteps_per_epoch`` times, continuing their episodes from the last
        epoch (unless ``force_reset_train_envs_every`` steps have passed: then every env restarts)."""
        stats = (self._collector or self.train_rollout).collect(
            self.policy, self.train_timesteps_per_epoch, self.sample_actions, self._rollout_seed(),
            f"epoch {self.epoch} collect",
        )  # fmt: skip
        self.total_frames += stats.frames * self.accelerator.num_processes
        metrics = self._summarize(stats, "train") | stats.metrics
        self.accelerator.wait_for_everyone()
        metrics.update(self.dataset.on_end_of_collection() if self.is_main else {})
        return metrics

    def evaluate_val(self) -> dict[str, float]:
        self.val_rollout.restart()
        stats = self.val_rollout.collect(
            self.policy, self.val_timesteps_per_epoch, self.eval_sample_actions, self._rollout_seed(),
            f"epoch {self.epoch} val",
        )  # fmt: skip
        return self._summarize(stats, "val")

    def evaluate_test(
        self,
        make_test_env: EnvFactory,
        timesteps: int,
        render: bool | str = False,
        save_trajs_to: str | None = None,
        episodes: int | None = None,
        render_to: str | None = None,
    ) -> dict[str, float]:
        """Roll out the policy on fresh envs for ``timesteps`` steps per actor (or until ``episodes`` episodes
        finished); with ``save_trajs_to``, exactly the finished episodes the metrics count are written there as
        a dataset. ``render`` (True: ``{run_dir}/videos``, or a folder; ``render_to`` is the same) writes the
        first actor's episodes as GIFs (``episode_0000.gif``, ...); ``make_test_env`` must build envs with
        ``render_mode="rgb_array"``."""
        if render_to is None and render:
            render_to = render if isinstance(render, str) else os.path.join(self.run_dir, "videos")
        with KeptEpisodes(save_trajs_to) as saved:
            rollout = self.make_rollout(self.make_envs(make_test_env, saved.folder, render_to))
            try:
                stats = rollout.collect(
                    self.policy, timesteps, self.eval_sample_actions, self._rollout_seed(), "test", episodes
                )
            finally:
                rollout.close()
            saved.keep(stats.episodes)
        return self._summarize(stats, "test")

    # ================================================================== learning
    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The agent's objective (:meth:`Agent.loss`) under mixed precision, with this experiment's mask hooks."""
        with self.caster():
            return self.policy.loss(batch, self._train_forward, self.edit_critic_mask, self.edit_actor_mask)

    def edit_critic_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`Agent.edit_critic_mask` (override either)."""
        return self.policy.edit_critic_mask(batch, mask)

    def edit_actor_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`Agent.edit_actor_mask` (override either)."""
        return self.policy.edit_actor_mask(batch, mask)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One batch through :meth:`Learner.train_step` (skips and counts non-finite updates)."""
        try:
            return self.learner.train_step(batch, self.compute_loss)
        except DivergenceError as e:
            raise DivergenceError(f"{e} (epoch {self.epoch})") from None

    def learn_epoch(self) -> dict[str, float]:
        if self.role == "both" and self.epoch < self.start_collecting_at_epoch:  # offline: nothing will arrive
            require_data(
                self.dataset,
                f"epoch {self.epoch} trains before any collection (start_collecting_at_epoch = "
                f"{self.start_collecting_at_epoch})",
            )
        # a learner that collects nothing itself (actor/learner split) waits for other processes to fill the buffer
        seconds = 0 if self.epoch >= self.start_collecting_at_epoch else self.wait_for_data_seconds
        if not self._feed.wait(seconds, print if self.verbose and self.is_main else None):
            why = f"the learner waited {seconds:g} s (Experiment.wait_for_data_seconds) at epoch {self.epoch}"
            return self._feed.starved(why, self.grad_updates > 0) if self.role == "learn" else {}
        if self.role == "learn":  # its frames: the transitions its buffer received
            self.total_frames = self._feed.frames(self.total_frames)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        bars = None if (self.verbose and self.is_main) else True
        for i, batch in enumerate(
            progress(
                self._feed.batches(self.init_dloaders()), desc=f"epoch {self.epoch} train", disable=bars, unit="batches"
            )
        ):
            step_metrics = self.train_step(batch.to(self.DEVICE))
            for k, v in step_metrics.items():
                sums[k] += v
                counts[k] += 1
            # numbered as the epoch row that follows; not at the last batch, whose step that row takes
            if self.log_interval and (i + 1) % self.log_interval == 0 and i + 1 < self.train_batches_per_epoch:
                self.log({f"learn/{k}": v for k, v in step_metrics.items()}, epoch=self.epoch + 1)
        self.learner.sync_buffers()
        return (
            self.learner.mean_across_processes({f"learn/{k}": sums[k] / counts[k] for k in sums}) | self._feed.metrics()
        )

    # ================================================================== the loop
    def learn(self) -> dict[str, float]:
        """Run epochs from the current one to ``epochs`` and end with a training-state checkpoint; returns the
        last epoch's metrics. After a loaded checkpoint it continues that run (the rows logged after the
        checkpoint move aside); a fresh run on a folder that already holds checkpoints raises RunExistsError."""
        if not self._started:
            self.start()
        resumed_from = self._begin()
        metrics: dict[str, float] = {}
        first_epoch = self.epoch
        try:
            while self.epoch < self.epochs:
                metrics = self.run_epoch()
                if resumed_from is not None and self.is_main:  # the new config has run: keep the old one aside
                    self.run_folder.keep_replaced_config(resumed_from)
                    resumed_from = None
                if any([cb.on_epoch_end(self, metrics) for cb in self.callbacks]):
                    break
            if self.val_interval and self.epoch >= self.epochs and self.epochs > self.start_learning_at_epoch:
                metrics.update(self._final_evaluation())
            if self.role != "collect" and self.epoch not in self.checkpoint_epochs():
                self.save_checkpoint()
        except BaseException:
            if self.epoch == first_epoch and self.is_main:  # config.gin describes the epochs that ran
                self.run_folder.restore_config()
            raise
        finally:
            if self.is_main and self.role != "collect":  # plots of metrics.jsonl are the learner's to draw
                plot_metrics(self.run_dir)
        return metrics

    def run_epoch(self) -> dict[str, float]:
        """One epoch: evaluate, collect, train, checkpoint, log."""
        t0, metrics = time.perf_counter(), {}
        for cb in self.callbacks:
            cb.on_epoch_start(self)
        if self.always_load_latest:
            metrics["latest_policy_loaded"] = float(self.read_latest_policy())
        if self.val_interval and self.epoch % self.val_interval == 0:
            metrics.update(self.evaluate_val())
        if self.epoch >= self.start_collecting_at_epoch:
            metrics.update(timed(self.collect_new_training_data, "collect_seconds"))
        if self.epoch >= self.start_learning_at_epoch:
            metrics.update(timed(self.learn_epoch, "learn_seconds"))
        self.epoch += 1
        checkpoint = bool(self.ckpt_interval) and self.epoch % self.ckpt_interval == 0
        if checkpoint:
            self.save_checkpoint()
        if self.always_save_latest:
            self.write_latest_policy()
        metrics["epoch_seconds"] = time.perf_counter() - t0
        self.log(metrics)
        if checkpoint and self.is_main:  # a long run has plots long before it ends
            plot_metrics_in_background(self.run_dir)
        if self.verbose and self.is_main:
            print(self._epoch_line(metrics))
        return metrics

    def _final_evaluation(self) -> dict[str, float]:
        """Evaluations run at the start of an epoch: this one sees the policy after the last updates."""
        final = self.evaluate_val()
        self.log(final)
        if self.verbose and self.is_main:
            print("final evaluation | " + self._epoch_line(final))
        return final

    # ================================================================== the buffer, closing
    def delete_buffer_from_disk(self) -> None:
        if self.is_main and self.has_dset_edit_rights:
            self.dataset.delete_from_disk()

    def close(self) -> None:
        for rollout in (getattr(self, "train_rollout", None), getattr(self, "_val_rollout", None)):
            if rollout is not None:
                close_envs(rollout.envs)
        if getattr(self, "logger", None) is not None:
            self.logger.finish()
