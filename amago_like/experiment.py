"""``Experiment``: the one place that knows every part (envs, data, agent, logging) and runs the loop.

Each epoch: evaluate (every ``val_interval``) -> collect ``train_timesteps_per_epoch`` steps per
actor into the disk buffer -> ``train_batches_per_epoch`` gradient batches -> checkpoint (every
``ckpt_interval``) -> log.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import gin
import gymnasium as gym
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, broadcast_object_list, gather_object
from tqdm import tqdm

from amago_like.agents import Agent
from amago_like.callbacks import Callback
from amago_like.checks import DiskFullError, check_choice, check_int, check_number, check_writable_dir, storage_error
from amago_like.data.dataset import PADDED_SAMPLING, Batch, RLDataset, make_dataloader
from amago_like.data.trajectory import FORMATS
from amago_like.envs.exploration import ExplorationWrapper
from amago_like.envs.vector import ENV_MODES, as_amago_env, close_envs, finished_episodes, make_vector_env
from amago_like.envs.wrapper import RL2_KEY, TIME_KEY, EpisodeStats, split_timestep
from amago_like.logging import RunLogger, plot_metrics
from amago_like.nets.traj_encoders import TformerTrajEncoder, TrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder, TstepEncoder

MIXED_PRECISION = ("no", "fp16", "bf16")
ROLES = ("both", "collect", "learn")
NEVER = 2**62  # an epoch that never comes


class CheckpointError(Exception):
    """A checkpoint that is missing or does not fit this experiment."""


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients too many updates in a row."""


class RunExistsError(FileExistsError):
    """A fresh run (nothing loaded) was pointed at a run folder that already holds checkpoints."""


def summarize_episodes(episodes: list[EpisodeStats], prefix: str) -> dict[str, float]:
    """Average return, length and every logged metric, per env name and over all episodes."""
    by_name: dict[str, list[EpisodeStats]] = defaultdict(list)
    for ep in episodes:
        by_name[ep.env_name].append(ep)

    def averages(eps: list[EpisodeStats]) -> dict[str, float]:
        values: dict[str, list[float]] = defaultdict(list)
        for ep in eps:
            values["return"].append(ep.ret)
            values["episode_length"].append(ep.length)
            for k, v in ep.metrics.items():
                values[k.removeprefix("log/")].append(v)
        return {k: float(np.mean(v)) for k, v in values.items()}

    out = {f"{prefix}/{k}": v for k, v in averages(episodes).items()} if episodes else {}
    out[f"{prefix}/episodes"] = len(episodes)
    if len(by_name) > 1 or (by_name and prefix != "train"):
        for name, eps in by_name.items():
            out.update({f"{prefix}/{name}/{k}": v for k, v in averages(eps).items()})
    return out


def _state_mismatch(model: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """What differs between a model's state_dict and a saved one, in a few words."""
    parts = []
    missing = sorted(set(model) - set(saved))
    unexpected = sorted(set(saved) - set(model))
    shapes = [
        f"{k} {tuple(saved[k].shape)} saved, {tuple(model[k].shape)} here"
        for k in model
        if k in saved and saved[k].shape != model[k].shape
    ]
    for label, keys in (
        ("not in the checkpoint", missing),
        ("only in the checkpoint", unexpected),
        ("other shapes", shapes),
    ):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
            parts.append(f"{label}: {', '.join(keys[:3])}{more}")
    if "log_entropy_coeff" in missing + unexpected:
        parts.append("log_entropy_coeff exists only when Agent.target_entropy is set")
    return "; ".join(parts)


@gin.configurable
class Experiment:
    """A meta-RL training run. Every argument is bindable from gin (``Experiment.epochs = 10``)."""

    def __init__(
        self,
        run_name: str,
        ckpt_base_dir: str,
        max_seq_len: int,
        dataset: RLDataset,
        make_train_env: Callable[[], gym.Env],
        make_val_env: Callable[[], gym.Env],
        val_timesteps_per_epoch: int,
        tstep_encoder_type: type[TstepEncoder] = FFTstepEncoder,
        traj_encoder_type: type[TrajEncoder] = TformerTrajEncoder,
        agent_type: type[Agent] = Agent,
        parallel_actors: int = 12,
        env_mode: str = "async",
        async_env_mp_context: str | None = None,
        exploration_wrapper_type: type[ExplorationWrapper] | None = None,
        sample_actions: bool = True,
        eval_sample_actions: bool | None = None,
        force_reset_train_envs_every: int | None = None,
        log_to_wandb: bool = False,
        wandb_project: str = "amago_like",
        wandb_entity: str | None = None,
        wandb_group_name: str | None = None,
        verbose: bool = True,
        log_interval: int = 250,
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
        val_interval: int | None = 10,
        ckpt_interval: int | None = 20,
        always_save_latest: bool = True,
        always_load_latest: bool = False,
        batch_size: int = 24,
        batches_per_update: int = 1,
        learning_rate: float = 1e-4,
        critic_loss_weight: float = 10.0,
        lr_warmup_steps: int = 500,
        grad_clip: float = 1.0,
        l2_coeff: float = 1e-3,
        mixed_precision: str = "no",
        torch_compile: bool = False,
        seed: int | None = None,
        keep_checkpoints: int | None = None,
        callbacks: tuple[Callback, ...] = (),
        max_bad_updates_in_a_row: int = 20,
        wait_for_data_seconds: float = 600.0,
        role: str = "both",
    ):
        check_choice("env_mode", env_mode, ENV_MODES)
        check_choice("save_trajs_as", save_trajs_as, FORMATS)
        check_choice("padded_sampling", padded_sampling, PADDED_SAMPLING)
        check_choice("mixed_precision", mixed_precision, MIXED_PRECISION)
        check_choice("role", role, ROLES)
        for name, value, minimum in (
            ("max_seq_len", max_seq_len, None),
            ("batch_size", batch_size, 1),
            ("batches_per_update", batches_per_update, 1),
            ("parallel_actors", parallel_actors, 1),
            ("epochs", epochs, 1),
            ("train_timesteps_per_epoch", train_timesteps_per_epoch, 0),
            ("train_batches_per_epoch", train_batches_per_epoch, 0),
            ("val_timesteps_per_epoch", val_timesteps_per_epoch, 0),
            ("dloader_workers", dloader_workers, 0),
            ("max_bad_updates_in_a_row", max_bad_updates_in_a_row, 1),
        ):
            check_int(f"Experiment.{name}", value, minimum)
        for name, value in (("traj_save_len", traj_save_len), ("keep_checkpoints", keep_checkpoints)):
            check_int(f"Experiment.{name}", value, allow_none=True)
        for name, value in (("learning_rate", learning_rate), ("grad_clip", grad_clip), ("l2_coeff", l2_coeff)):
            check_number(f"Experiment.{name}", value)
        if max_seq_len < 2:
            raise ValueError(
                f"Experiment.max_seq_len must be >= 2 (a timestep and the next one), got {max_seq_len}; "
                "sequences shorter than that hold no transition to learn from"
            )
        # fail before any env steps or training, not at the first file written an epoch later
        check_writable_dir(os.path.join(ckpt_base_dir, run_name), "the run folder")
        if role != "learn" and dataset.save_new_trajs_to is not None:
            check_writable_dir(dataset.save_new_trajs_to, "the trajectory buffer folder")
        self.run_name, self.ckpt_base_dir, self.max_seq_len = run_name, ckpt_base_dir, max_seq_len
        self.dataset = dataset
        self.make_train_env, self.make_val_env = make_train_env, make_val_env
        self.val_timesteps_per_epoch = val_timesteps_per_epoch
        self.tstep_encoder_type, self.traj_encoder_type, self.agent_type = (
            tstep_encoder_type,
            traj_encoder_type,
            agent_type,
        )
        self.parallel_actors, self.env_mode, self.async_env_mp_context = parallel_actors, env_mode, async_env_mp_context
        self.exploration_wrapper_type = exploration_wrapper_type
        self.sample_actions = sample_actions
        # val / test rollouts: None follows sample_actions; False acts with the policy's mode
        self.eval_sample_actions = sample_actions if eval_sample_actions is None else eval_sample_actions
        self.force_reset_train_envs_every = force_reset_train_envs_every
        self._steps_since_train_reset = 0
        self.log_to_wandb, self.wandb_project = log_to_wandb, wandb_project
        self.wandb_entity, self.wandb_group_name = wandb_entity, wandb_group_name
        self.verbose, self.log_interval = verbose, log_interval
        self.has_dset_edit_rights, self.save_trajs_as = has_dset_edit_rights, save_trajs_as
        if traj_save_len is not None and traj_save_len < 1:
            raise ValueError(f"traj_save_len must be None (save whole episodes) or >= 1, got {traj_save_len}")
        # long rollouts are saved in pieces; staggering only matters when there are pieces
        self.traj_save_len = traj_save_len
        self.stagger_traj_file_lengths = stagger_traj_file_lengths and traj_save_len is not None
        self.padded_sampling, self.dloader_workers = padded_sampling, dloader_workers
        self.epochs, self.start_learning_at_epoch = epochs, start_learning_at_epoch
        self.start_collecting_at_epoch = start_collecting_at_epoch
        self.train_timesteps_per_epoch, self.train_batches_per_epoch = (
            train_timesteps_per_epoch,
            train_batches_per_epoch,
        )
        self.val_interval, self.ckpt_interval = val_interval, ckpt_interval
        self.always_save_latest, self.always_load_latest = always_save_latest, always_load_latest
        self.batch_size, self.batches_per_update = batch_size, batches_per_update
        self.learning_rate, self.critic_loss_weight = learning_rate, critic_loss_weight
        self.lr_warmup_steps, self.grad_clip, self.l2_coeff = lr_warmup_steps, grad_clip, l2_coeff
        self.mixed_precision, self.torch_compile, self.seed = mixed_precision, torch_compile, seed
        if keep_checkpoints is not None and keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be None (keep all) or >= 1, got {keep_checkpoints}")
        self.keep_checkpoints = keep_checkpoints
        self.callbacks = list(callbacks)
        self.max_bad_updates_in_a_row = max_bad_updates_in_a_row
        self.wait_for_data_seconds = wait_for_data_seconds
        self.bad_updates = 0  # skipped for non-finite loss or gradients, over the whole run
        # actor/learner split: processes sharing one run folder and buffer
        self.role = role
        if role == "collect":  # act with the newest policy the learner wrote; never train or prune
            self.start_learning_at_epoch, self.always_load_latest = NEVER, True
            self.always_save_latest, self.ckpt_interval, self.has_dset_edit_rights = False, None, False
        elif role == "learn":  # train on what collectors write; publish the policy every epoch
            self.start_collecting_at_epoch, self.always_save_latest, self.always_load_latest = NEVER, True, False
        self._bad_in_a_row = 0
        self.run_dir = os.path.join(ckpt_base_dir, run_name)
        self.epoch = 0
        self.total_frames = 0
        self.grad_updates = 0
        self._started = False

    # ================================================================== set-up
    def start(self) -> None:
        """Build the accelerator, envs, agent and optimizer; write the operative config."""
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision, gradient_accumulation_steps=self.batches_per_update
        )
        if self.seed is not None:
            seed = self.seed + self.accelerator.process_index
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        if self.is_main:
            for sub in ("ckpts/training_states", "ckpts/policy_weights", "ckpts/latest"):
                os.makedirs(os.path.join(self.run_dir, sub), exist_ok=True)
        self.accelerator.wait_for_everyone()
        if hasattr(self.dataset, "has_edit_rights"):
            self.dataset.has_edit_rights = self.has_dset_edit_rights and self.is_main
        self.init_envs()
        self.init_model()
        self.init_logger()
        self._started = True
        if self.verbose and self.is_main:
            print(self.summary())

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def _no_bars(self) -> bool | None:
        # None: tqdm shows bars only on a terminal, so logs of batch jobs stay readable
        return None if (self.verbose and self.is_main) else True

    @property
    def DEVICE(self) -> torch.device:
        return self.accelerator.device

    def caster(self):
        """Context manager for mixed-precision forward passes (a no-op at mixed_precision='no')."""
        return self.accelerator.autocast()

    def _make_envs(
        self, make_env: Callable[[], gym.Env], save_dir: str | None, record_to: str | None = None
    ) -> gym.vector.VectorEnv:
        return make_vector_env(
            make_env,
            self.parallel_actors,
            self.env_mode,
            save_dir,
            self.save_trajs_as,
            self.async_env_mp_context,
            save_every=self.traj_save_len,
            stagger=self.stagger_traj_file_lengths,
            record_to=record_to,
        )

    def init_envs(self) -> None:
        make_train_env = self.make_train_env
        if self.exploration_wrapper_type is not None:  # training actors only; evaluation acts as the policy says
            make_train_env = functools.partial(_explore, self.make_train_env, self.exploration_wrapper_type)
        self.train_envs = self._make_envs(make_train_env, self.dataset.save_new_trajs_to)
        self.val_envs = self._make_envs(self.make_val_env, None)
        space = self.train_envs.single_observation_space
        self.obs_space = gym.spaces.Dict({k: v for k, v in space.spaces.items() if k not in (RL2_KEY, TIME_KEY)})
        self.rl2_space = space[RL2_KEY]
        self.action_space = self.train_envs.single_action_space
        val_space = self.val_envs.single_observation_space
        if val_space != space:
            raise ValueError(f"train and val envs disagree on observations: {space} vs {val_space}")
        self._train_obs = None  # training rollouts continue across epochs

    def init_model(self) -> None:
        agent = self.agent_type(
            obs_space=self.obs_space,
            rl2_space=self.rl2_space,
            action_space=self.action_space,
            max_seq_len=self.max_seq_len,
            tstep_encoder_type=self.tstep_encoder_type,
            traj_encoder_type=self.traj_encoder_type,
        )
        agent = agent.to(self.DEVICE)  # before the optimizer: a fused one needs its parameters on the GPU
        # on a GPU, AdamW's fused kernel updates every parameter at once instead of launching kernels per tensor
        fused = self.DEVICE.type == "cuda"
        optimizer = torch.optim.AdamW(agent.param_groups(self.learning_rate), weight_decay=self.l2_coeff, fused=fused)
        warmup = max(self.lr_warmup_steps, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min((step + 1) / warmup, 1.0))
        self.agent, self.optimizer, self.scheduler = self.accelerator.prepare(agent, optimizer, scheduler)
        # torch.compile fuses the loss's hundreds of small kernels; without it a GPU update is launch-bound
        self._train_forward = torch.compile(self.agent) if self.torch_compile else self.agent

    def init_logger(self) -> None:
        wandb_run = None
        if self.is_main:
            with open(os.path.join(self.run_dir, "config.gin"), "w") as f:
                f.write(gin.operative_config_str() or gin.config_str())
            if self.log_to_wandb:
                import wandb

                wandb_run = wandb.init(
                    project=self.wandb_project,
                    entity=self.wandb_entity,
                    group=self.wandb_group_name,
                    name=self.run_name,
                    dir=self.run_dir,
                    config={"gin": gin.config_str()},
                )
        filename = "metrics.jsonl" if self.role != "collect" else "metrics_collect.jsonl"
        self.logger = RunLogger(self.run_dir, wandb_run, filename)

    @property
    def policy(self) -> Agent:
        return self.accelerator.unwrap_model(self.agent)

    def summary(self) -> str:
        """The start-up description of the run: model size, envs, dataset, devices, schedule."""
        sizes = self.policy_metrics()
        return "\n".join(
            [
                f"== amago_like run '{self.run_name}' -> {self.run_dir}",
                f"agent: {type(self.policy).__name__} {sizes['params/total'] / 1e6:.2f}M trainable parameters, "
                f"trunk {sizes['params/traj_encoder'] / 1e6:.2f}M, tstep encoder {sizes['params/tstep_encoder'] / 1e6:.2f}M",
                f"  {type(self.policy.tstep_encoder).__name__} -> {type(self.policy.traj_encoder).__name__}, max_seq_len {self.max_seq_len}",
                f"envs: {self.parallel_actors} x {self.env_mode}, obs {dict(self.obs_space.spaces)}, actions {self.action_space}",
                f"dataset: {self.dataset.get_description()}",
                f"devices: {self.accelerator.num_processes} process(es) on {self.DEVICE}, mixed precision {self.mixed_precision}",
                f"schedule: {self.epochs} epochs x ({self.train_timesteps_per_epoch} steps/actor, {self.train_batches_per_epoch} batches of {self.batch_size} x {self.max_seq_len})",
            ]
        )

    # ================================================================== interaction
    def _obs_to_torch(self, obs: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        env_obs, rl2s, time_idxs = split_timestep(obs)
        to = lambda x: torch.as_tensor(np.asarray(x), device=self.DEVICE).unsqueeze(1)  # noqa: E731  (N, 1, ...)
        return {k: to(v) for k, v in env_obs.items()}, to(rl2s).float(), to(time_idxs).long()

    def interact(
        self,
        envs: gym.vector.VectorEnv,
        timesteps: int,
        state: tuple | None = None,
        desc: str = "interact",
        sample: bool | None = None,
    ) -> tuple[list[EpisodeStats], tuple]:
        """Step every env ``timesteps`` times with the current policy; returns finished episodes and the
        (obs, hidden_state) to continue from. ``state=None`` resets the envs first. ``sample``: sample
        actions (True) or take the policy's mode (False); None follows ``sample_actions``."""
        sample = self.sample_actions if sample is None else sample
        policy = self.policy
        policy.eval()
        if state is None:
            seed = None if self.seed is None else self.seed + 1000 * self.accelerator.process_index + self.epoch
            obs, _ = envs.reset(seed=seed)
            hidden = policy.init_hidden_state(envs.num_envs, self.DEVICE)
        else:
            obs, hidden = state
        episodes: list[EpisodeStats] = []
        for _ in tqdm(range(timesteps), desc=desc, disable=self._no_bars, leave=False):
            with self.caster():
                actions, hidden = policy.get_actions(*self._obs_to_torch(obs), hidden, sample=sample)
            obs, _, terminated, truncated, infos = envs.step(actions.cpu().numpy())
            done = np.logical_or(terminated, truncated)
            if done.any():
                hidden = policy.reset_hidden_state(hidden, done)
                episodes += finished_episodes(infos)
        policy.train()
        return episodes, (obs, hidden)

    def collect_new_training_data(self) -> dict[str, float]:
        """Step the training envs ``train_timesteps_per_epoch`` times, continuing their episodes from the
        last epoch (unless ``force_reset_train_envs_every`` steps have passed: then every env restarts)."""
        if self.force_reset_train_envs_every and self._steps_since_train_reset >= self.force_reset_train_envs_every:
            self._train_obs = None
        if self._train_obs is None:
            self._steps_since_train_reset = 0
        self._steps_since_train_reset += self.train_timesteps_per_epoch
        episodes, self._train_obs = self.interact(
            self.train_envs, self.train_timesteps_per_epoch, self._train_obs, desc=f"epoch {self.epoch} collect"
        )
        self.total_frames += self.train_timesteps_per_epoch * self.parallel_actors * self.accelerator.num_processes
        metrics = summarize_episodes(self._gather_episodes(episodes), "train")
        self.accelerator.wait_for_everyone()
        metrics.update(self.dataset.on_end_of_collection() if self.is_main else {})
        return metrics

    def evaluate_val(self) -> dict[str, float]:
        episodes, _ = self.interact(
            self.val_envs, self.val_timesteps_per_epoch, None, f"epoch {self.epoch} val", self.eval_sample_actions
        )
        return summarize_episodes(self._gather_episodes(episodes), "val")

    def _gather_episodes(self, episodes: list[EpisodeStats]) -> list[EpisodeStats]:
        """Every process's finished episodes (each process runs its own actors)."""
        return gather_object(episodes) if self.accelerator.num_processes > 1 else episodes

    def _mean_across_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.DEVICE)
        return dict(zip(keys, self.accelerator.reduce(values, reduction="mean").tolist()))

    def evaluate_test(
        self,
        make_test_env: Callable[[], gym.Env],
        timesteps: int,
        save_trajs_to: str | None = None,
        episodes: int | None = None,
        render_to: str | None = None,
    ) -> dict[str, float]:
        """Roll out the policy on fresh envs for ``timesteps`` steps per actor (or until ``episodes``
        episodes finished); with ``save_trajs_to``, every finished episode is written there as a dataset.
        With ``render_to``, the first actor's episodes are written there as GIFs
        (``episode_0000.gif``, ...); ``make_test_env`` must build envs with ``render_mode="rgb_array"``."""
        envs = self._make_envs(make_test_env, save_trajs_to, render_to)
        try:
            finished: list[EpisodeStats] = []
            state = None
            steps = 0
            while steps < timesteps and (episodes is None or len(finished) < episodes):
                chunk = min(timesteps - steps, 100 if episodes is not None else timesteps)
                eps, state = self.interact(envs, chunk, state, "test", self.eval_sample_actions)
                finished += eps
                steps += chunk
        finally:
            close_envs(envs)
        return summarize_episodes(finished[:episodes] if episodes else finished, "test")

    # ================================================================== learning
    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """critic_loss_weight * critic loss + actor loss, over the transitions the mask hooks keep,
        and the agent's metrics (0-dim tensors, still on the device)."""
        critic_mask = self.edit_critic_mask(batch, batch.transition_mask.clone())
        actor_mask = self.edit_actor_mask(batch, batch.transition_mask.clone())
        with self.caster():
            critic_loss, actor_loss, metrics = self._train_forward(
                batch, critic_mask=critic_mask, actor_mask=actor_mask
            )
        return self.critic_loss_weight * critic_loss + actor_loss, metrics

    def edit_critic_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """Hook: which transitions (B, L-1, 1) bool train the critics. Default: every real one."""
        return mask

    def edit_actor_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """Hook: which transitions (B, L-1, 1) bool train the actor (e.g. drop exploratory or demo steps)."""
        return mask

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One batch: forward, backward and (every ``batches_per_update`` batches) an optimizer step.

        An update whose loss or gradient norm is not finite is skipped and counted
        (``bad_updates``); ``max_bad_updates_in_a_row`` of them stop the run with DivergenceError.
        """
        with self.accelerator.accumulate(self.agent):
            loss, metrics = self.compute_loss(batch)
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                metrics["grad_norm"] = self.accelerator.clip_grad_norm_(self.agent.parameters(), self.grad_clip)
            metrics = _read_scalars({**metrics, "loss": loss})  # the step's one wait for the device
            finite = np.isfinite(metrics.pop("loss")) and np.isfinite(metrics.get("grad_norm", 0.0))
            if not finite:
                self._skip_update()
            else:
                self.optimizer.step()
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.sync_gradients and finite:
            self.policy.soft_sync_targets()
            self.grad_updates += 1
            self._bad_in_a_row = 0
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["bad_updates"] = self.bad_updates
        return {k: v for k, v in metrics.items() if np.isfinite(v)}

    def _skip_update(self) -> None:
        self.bad_updates += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= self.max_bad_updates_in_a_row:
            raise DivergenceError(
                f"{self._bad_in_a_row} updates in a row had a non-finite loss or gradient (epoch {self.epoch}); "
                "stopping before writing a broken checkpoint. Lower learning_rate, check rewards for huge values, "
                "or resume from the last checkpoint."
            )

    def learn_epoch(self) -> dict[str, float]:
        if not self._wait_for_data():
            return {}
        loader = make_dataloader(
            self.dataset,
            self.max_seq_len,
            self.batch_size,
            self.train_batches_per_epoch,
            self.padded_sampling,
            self.dloader_workers,
        )
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for i, batch in enumerate(tqdm(loader, desc=f"epoch {self.epoch} train", disable=self._no_bars, leave=False)):
            step_metrics = self.train_step(batch.to(self.DEVICE))
            for k, v in step_metrics.items():
                sums[k] += v
                counts[k] += 1
            if self.log_interval and (i + 1) % self.log_interval == 0:
                self.log({f"learn/{k}": v for k, v in step_metrics.items()})
        self._sync_buffers()
        return self._mean_across_processes({f"learn/{k}": sums[k] / counts[k] for k in sums})

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers to every process, so that rollouts and checkpoints agree across ranks.

        The running statistics already merge every rank's batches (they all-reduce); this guards
        against any buffer that a rank updated alone."""
        if self.accelerator.num_processes > 1:
            for buf in self.policy.buffers():
                buf.copy_(broadcast(buf.clone(), from_process=0))

    def _wait_for_data(self) -> bool:
        """True when the dataset can be sampled. A learner that collects nothing itself (actor/learner
        split) waits up to ``wait_for_data_seconds`` for other processes to fill the buffer."""
        collects = self.epoch >= self.start_collecting_at_epoch
        deadline = time.time() + (0 if collects else self.wait_for_data_seconds)
        while True:
            if hasattr(self.dataset, "refresh_files"):
                self.dataset.refresh_files()
            if self.dataset.ready_for_training:
                return True
            if time.time() >= deadline:
                return False
            time.sleep(2.0)

    def learn(self) -> dict[str, float]:
        """Run epochs from the current one to ``epochs``; returns the last epoch's metrics."""
        if not self._started:
            self.start()
        self.check_not_overwriting()
        metrics: dict[str, float] = {}
        try:
            while self.epoch < self.epochs:
                t0 = time.time()
                metrics = {}
                for cb in self.callbacks:
                    cb.on_epoch_start(self)
                if self.always_load_latest:
                    metrics["latest_policy_loaded"] = float(self.read_latest_policy())
                if self.val_interval and self.epoch % self.val_interval == 0:
                    metrics.update(self.evaluate_val())
                if self.epoch >= self.start_collecting_at_epoch:
                    metrics.update(self.collect_new_training_data())
                if self.epoch >= self.start_learning_at_epoch:
                    metrics.update(self.learn_epoch())
                self.epoch += 1
                if self.ckpt_interval and self.epoch % self.ckpt_interval == 0:
                    self.save_checkpoint()
                if self.always_save_latest:
                    self.write_latest_policy()
                metrics["epoch_seconds"] = time.time() - t0
                self.log(metrics)
                if self.verbose and self.is_main:
                    print(self._epoch_line(metrics))
                if any([cb.on_epoch_end(self, metrics) for cb in self.callbacks]):
                    if self.ckpt_interval and self.epoch % self.ckpt_interval != 0:
                        self.save_checkpoint()
                    break
            if self.val_interval and self.epoch >= self.epochs and self.epochs > self.start_learning_at_epoch:
                # evaluations run at the start of an epoch: this one sees the policy after the last updates
                final = self.evaluate_val()
                self.log(final)
                metrics.update(final)
                if self.verbose and self.is_main:
                    print("final evaluation | " + self._epoch_line(final))
        finally:
            if self._started and self.is_main:
                plot_metrics(self.run_dir)
        return metrics

    def check_not_overwriting(self) -> None:
        """RunExistsError if training from epoch 0 would overwrite this run folder's checkpoints.
        Collect / learn roles share a folder on purpose and are exempt."""
        if self.epoch == 0 and self.role == "both" and self.checkpoint_epochs():
            raise RunExistsError(
                f"{self.run_dir} already holds a run (checkpoints of epochs {self.checkpoint_epochs()}); "
                "starting afresh would overwrite it. Pass --resume to continue it, choose another --run_name, "
                "or delete that folder (and its buffer) to start over (from Python: call load_latest_checkpoint() "
                "before learn() to continue)"
            )

    def _epoch_line(self, m: dict[str, float]) -> str:
        shown = [f"epoch {self.epoch}/{self.epochs}", f"frames {self.total_frames}", f"updates {self.grad_updates}"]
        for k in ("train/return", "val/return", "val/Success", "learn/critic_loss", "epoch_seconds"):
            if k in m:
                shown.append(f"{k} {m[k]:.3g}")
        return " | ".join(shown)

    def x_axis_metrics(self) -> dict[str, float]:
        return {"epoch": self.epoch, "total_frames": self.total_frames, "grad_updates": self.grad_updates}

    def policy_metrics(self) -> dict[str, float]:
        """Size of the policy, for the summary and the logs."""
        policy = self.policy
        return {
            "params/total": sum(p.numel() for p in policy.parameters() if p.requires_grad),
            "params/traj_encoder": sum(p.numel() for p in policy.traj_encoder.parameters()),
            "params/tstep_encoder": sum(p.numel() for p in policy.tstep_encoder.parameters()),
        }

    def log(self, metrics: dict[str, float]) -> None:
        if self.is_main and metrics:
            self.logger.log({**metrics, **self.x_axis_metrics()}, step=self.grad_updates)

    # ================================================================== checkpoints
    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, "ckpts")

    @property
    def _states_dir(self) -> str:
        return os.path.join(self.ckpt_dir, "training_states")

    def checkpoint_epochs(self) -> list[int]:
        """Epochs with a complete training-state checkpoint (half-written ``.tmp`` folders never count)."""
        if not os.path.isdir(self._states_dir):
            return []
        return sorted(
            int(n.removeprefix("epoch_"))
            for n in os.listdir(self._states_dir)
            if n.startswith("epoch_")
            and n.removeprefix("epoch_").isdigit()
            and os.path.exists(os.path.join(self._states_dir, n, "state.pt"))
        )

    def save_checkpoint(self) -> str:
        """Full training state to ``ckpts/training_states/epoch_N`` and policy weights to
        ``ckpts/policy_weights/policy_epoch_N.pt``. Written under a temporary name and renamed, so a
        kill mid-write leaves the previous checkpoints intact; then ``keep_checkpoints`` prunes old ones.
        Collective: the main process writes, and if it fails every rank raises (DiskFullError for a full
        disk, else RuntimeError on the other ranks) instead of waiting for it."""
        self.accelerator.wait_for_everyone()
        final = os.path.join(self._states_dir, f"epoch_{self.epoch}")
        error = None
        if self.is_main:
            try:
                self._write_checkpoint(final)
            except Exception as e:
                error = e
        # the other ranks learn whether the main process wrote it, so none waits on a rank that failed
        failure = None if error is None else (type(error).__name__, str(error), getattr(error, "errno", None))
        failure = broadcast_object_list([failure])[0]
        if error is not None:
            raise error
        if failure is not None:
            name, message, code = failure
            err = (DiskFullError if name == DiskFullError.__name__ else RuntimeError)(
                f"the main process could not write checkpoint {final}: {message}"
            )
            err.errno = code
            raise err
        self.accelerator.wait_for_everyone()
        return final

    def _write_checkpoint(self, final: str) -> None:
        """The main process's half of save_checkpoint."""
        state = {
            "agent": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "counters": {
                "epoch": self.epoch,
                "total_frames": self.total_frames,
                "grad_updates": self.grad_updates,
                "bad_updates": self.bad_updates,
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.DEVICE) if self.DEVICE.type == "cuda" else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        tmp = final + ".tmp"
        weights = self._policy_weights_path(self.epoch)
        # both files are complete on disk before either is renamed into place; a failed write (a full
        # disk: DiskFullError) removes both temporary copies and leaves every older checkpoint as it was
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            _write_torch(state, os.path.join(tmp, "state.pt"))
            _write_torch(self.policy.state_dict(), weights + ".tmp")
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.exists(weights + ".tmp"):
                os.remove(weights + ".tmp")
            if isinstance(e, OSError):
                raise storage_error(e, tmp, _CKPT_HINT) from None
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        os.replace(weights + ".tmp", weights)
        self._prune_checkpoints()

    def _policy_weights_path(self, epoch: int) -> str:
        return os.path.join(self.ckpt_dir, "policy_weights", f"policy_epoch_{epoch}.pt")

    def _prune_checkpoints(self) -> None:
        if self.keep_checkpoints is None:
            return
        for epoch in self.checkpoint_epochs()[: -self.keep_checkpoints]:
            shutil.rmtree(os.path.join(self._states_dir, f"epoch_{epoch}"), ignore_errors=True)
            if os.path.exists(self._policy_weights_path(epoch)):
                os.remove(self._policy_weights_path(epoch))

    def load_checkpoint_from_path(self, path: str, resume_training_state: bool = True) -> None:
        """Load a training-state folder (``.../epoch_N``) or a policy-weights file (``.pt``)."""
        file, state, weights = _read_checkpoint(path)
        self._load_policy_weights(weights, file)
        if resume_training_state and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self._apply_configured_rates()
            c = state["counters"]
            self.epoch, self.total_frames, self.grad_updates = c["epoch"], c["total_frames"], c["grad_updates"]
            self.bad_updates = c.get("bad_updates", 0)
            self._restore_exploration_schedule()
            torch.set_rng_state(state["rng"]["torch"])
            if state["rng"].get("cuda") is not None and self.DEVICE.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.DEVICE)
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])

    def load_average_weights(self, paths: Sequence[str]) -> None:
        """Load the mean of several checkpoints' policy weights (training-state folders or ``.pt`` files).

        Floating-point entries are averaged; integer counters come from the last path. Averaging a run's
        late checkpoints evens out the swings between single ones (docs/RESULTS.md, ML1 reach-v3)."""
        if not paths:
            raise CheckpointError("load_average_weights needs at least one checkpoint path")
        loaded = [_read_checkpoint(p) for p in paths]
        newest_file, _, newest = loaded[-1]
        for file, _, weights in loaded[:-1]:
            if weights.keys() != newest.keys() or any(weights[k].shape != v.shape for k, v in newest.items()):
                raise CheckpointError(
                    f"{file} and {newest_file} hold different models ({_state_mismatch(newest, weights)}); "
                    "average checkpoints of one run only"
                )
        mean = {
            k: torch.stack([w[k].float() for _, _, w in loaded]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in newest.items()
        }
        self._load_policy_weights(mean, f"the average of {len(paths)} checkpoints ending with {newest_file}")

    def _load_policy_weights(self, weights: dict[str, torch.Tensor], source: str) -> None:
        try:
            self.policy.load_state_dict(weights)
        except RuntimeError:
            differences = _state_mismatch(self.policy.state_dict(), weights)
            raise CheckpointError(
                f"{source} was saved from a different model shape ({differences}); build the experiment "
                "with the gin config of the run that wrote it (its config.gin)"
            ) from None

    def _apply_configured_rates(self) -> None:
        """The optimizer state just loaded carries the learning rates and weight decay of the run that saved
        it; a resume that binds other ones (e.g. a lower ``learning_rate``) gets them from here on."""
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)  # accelerate wraps it
        configured = self.policy.param_groups(self.learning_rate)
        for i, (group, fresh) in enumerate(zip(self.optimizer.param_groups, configured)):
            old_lr, lr = scheduler.base_lrs[i], fresh["lr"]
            if old_lr != lr and self.verbose and self.is_main:
                print(f"learning rate of parameter group {i}: {old_lr:g} in the checkpoint, {lr:g} from now on")
            scaled = group["lr"] / old_lr if old_lr else 1.0  # where the warm-up schedule stands
            scheduler.base_lrs[i] = group["initial_lr"] = lr
            group["lr"] = lr * scaled
            group["weight_decay"] = fresh.get("weight_decay", self.l2_coeff)

    def _restore_exploration_schedule(self) -> None:
        """Move each training actor's exploration schedule to where the checkpointed run left it.

        Actors step in lockstep, so each one took total_frames / (actors x processes) exploring steps."""
        if self.exploration_wrapper_type is None or self.env_mode == "already_vectorized":
            return
        steps = self.total_frames // (self.parallel_actors * self.accelerator.num_processes)
        self.train_envs.set_attr("total_steps", [steps] * self.parallel_actors)

    def load_checkpoint(self, epoch: int, resume_training_state: bool = True) -> None:
        if epoch not in self.checkpoint_epochs():
            raise CheckpointError(
                f"no checkpoint for epoch {epoch} in {self.ckpt_dir}; available epochs: {self.checkpoint_epochs()}"
            )
        self.load_checkpoint_from_path(os.path.join(self._states_dir, f"epoch_{epoch}"), resume_training_state)

    def load_latest_checkpoint(self) -> int | None:
        """Resume from the newest complete checkpoint of this run; returns its epoch (None: fresh start)."""
        epochs = self.checkpoint_epochs()
        if not epochs:
            return None
        self.load_checkpoint(epochs[-1])
        self._train_obs = None  # envs restart their episodes
        return epochs[-1]

    def write_latest_policy(self) -> None:
        if self.is_main:
            _atomic_torch_save(self.policy.state_dict(), os.path.join(self.ckpt_dir, "latest", "policy.pt"))

    def read_latest_policy(self) -> bool:
        """Load ``ckpts/latest/policy.pt`` if a learner has written one; returns whether it did."""
        path = os.path.join(self.ckpt_dir, "latest", "policy.pt")
        if not os.path.exists(path):
            return False
        self.load_checkpoint_from_path(path, resume_training_state=False)
        return True

    def delete_buffer_from_disk(self) -> None:
        if self.is_main and self.has_dset_edit_rights:
            self.dataset.delete_from_disk()

    def close(self) -> None:
        for envs in (getattr(self, "train_envs", None), getattr(self, "val_envs", None)):
            if envs is not None:
                close_envs(envs)
        if getattr(self, "logger", None) is not None:
            self.logger.finish()


def _read_checkpoint(path: str) -> tuple[str, Any, dict[str, torch.Tensor]]:
    """(file read, its whole contents, the policy's weights) of a training-state folder or weights file."""
    file = os.path.join(path, "state.pt") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # onto the CPU: load_state_dict copies to the parameters' device, and the RNG states must stay CPU tensors
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise CheckpointError(f"{file} is not a readable checkpoint: {type(e).__name__}: {e}") from None
    weights = state["agent"] if isinstance(state, dict) and "agent" in state else state
    if not isinstance(weights, dict):
        raise CheckpointError(f"{file} holds a {type(weights).__name__}, not a model's weights")
    return file, state, weights


def _read_scalars(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Python floats of 0-dim tensors (and plain numbers), reading the device once rather than per value."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in metrics.items() if not torch.is_tensor(v)}
    if keys:
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values))
    return out


def _explore(make_env: Callable[[], gym.Env], wrapper_type: type[ExplorationWrapper]) -> gym.Env:
    """Module-level (so async workers can unpickle it): an exploration wrapper around the sequence wrapper."""
    return wrapper_type(as_amago_env(make_env()))


_CKPT_HINT = "set Experiment.keep_checkpoints (e.g. 3) to keep fewer checkpoints"


def _write_torch(obj: Any, path: str) -> None:
    """``torch.save`` through a Python file, flushed to disk. (Saving to a path would turn a full disk
    into a RuntimeError from torch's C++ writer; a Python file raises OSError with its errno.)"""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise storage_error(e, path, _CKPT_HINT) from None
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):  # torch's zip writer fails again while closing after a failed write
            raise storage_error(e.__context__, path, _CKPT_HINT) from None
        raise


def _atomic_torch_save(obj: Any, path: str) -> None:
    """Write under a temporary name, then rename: ``path`` is always the old or the new file, whole."""
    tmp = path + ".tmp"
    try:
        _write_torch(obj, tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
