"""``Experiment``: the one place that knows every part (envs, data, agent, logging) and runs the loop.

Each epoch: evaluate (every ``val_interval``) -> collect ``train_timesteps_per_epoch`` steps per
actor into the disk buffer -> ``train_batches_per_epoch`` gradient batches -> checkpoint (every
``ckpt_interval``) -> log.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import gin
import gymnasium as gym
import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm

from amago_like.agents import Agent
from amago_like.data.dataset import PADDED_SAMPLING, Batch, RLDataset, make_dataloader
from amago_like.data.trajectory import FORMATS
from amago_like.envs.vector import ENV_MODES, finished_episodes, make_vector_env
from amago_like.envs.wrapper import RL2_KEY, TIME_KEY, EpisodeStats, split_timestep
from amago_like.logging import RunLogger, plot_metrics
from amago_like.nets.traj_encoders import TformerTrajEncoder, TrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder, TstepEncoder

MIXED_PRECISION = ("no", "fp16", "bf16")


class CheckpointError(Exception):
    """A checkpoint that is missing or does not fit this experiment."""


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
        sample_actions: bool = True,
        log_to_wandb: bool = False,
        wandb_project: str = "amago_like",
        wandb_entity: str | None = None,
        wandb_group_name: str | None = None,
        verbose: bool = True,
        log_interval: int = 250,
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
        seed: int | None = None,
    ):
        _check_choice("env_mode", env_mode, ENV_MODES)
        _check_choice("save_trajs_as", save_trajs_as, FORMATS)
        _check_choice("padded_sampling", padded_sampling, PADDED_SAMPLING)
        _check_choice("mixed_precision", mixed_precision, MIXED_PRECISION)
        for name, value in dict(
            max_seq_len=max_seq_len - 1,
            batch_size=batch_size,
            batches_per_update=batches_per_update,
            parallel_actors=parallel_actors,
            epochs=epochs,
        ).items():
            if value < 1:
                raise ValueError(f"{name} must be >= {2 if name == 'max_seq_len' else 1}")
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
        self.sample_actions = sample_actions
        self.log_to_wandb, self.wandb_project = log_to_wandb, wandb_project
        self.wandb_entity, self.wandb_group_name = wandb_entity, wandb_group_name
        self.verbose, self.log_interval = verbose, log_interval
        self.has_dset_edit_rights, self.save_trajs_as = has_dset_edit_rights, save_trajs_as
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
        self.mixed_precision, self.seed = mixed_precision, seed
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

    def init_envs(self) -> None:
        save_dir = self.dataset.save_new_trajs_to
        self.train_envs = make_vector_env(
            self.make_train_env,
            self.parallel_actors,
            self.env_mode,
            save_dir,
            self.save_trajs_as,
            self.async_env_mp_context,
        )
        self.val_envs = make_vector_env(
            self.make_val_env, self.parallel_actors, self.env_mode, None, self.save_trajs_as, self.async_env_mp_context
        )
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
        optimizer = torch.optim.AdamW(agent.parameters(), lr=self.learning_rate, weight_decay=self.l2_coeff)
        warmup = max(self.lr_warmup_steps, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min((step + 1) / warmup, 1.0))
        self.agent, self.optimizer, self.scheduler = self.accelerator.prepare(agent, optimizer, scheduler)

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
        self.logger = RunLogger(self.run_dir, wandb_run)

    @property
    def policy(self) -> Agent:
        return self.accelerator.unwrap_model(self.agent)

    def summary(self) -> str:
        n_params = sum(p.numel() for p in self.policy.parameters() if p.requires_grad)
        parts = {
            "trunk": sum(p.numel() for p in self.policy.traj_encoder.parameters()),
            "tstep encoder": sum(p.numel() for p in self.policy.tstep_encoder.parameters()),
        }
        return "\n".join(
            [
                f"== amago_like run '{self.run_name}' -> {self.run_dir}",
                f"agent: {type(self.policy).__name__} {n_params / 1e6:.2f}M trainable parameters "
                + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in parts.items()),
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
        self, envs: gym.vector.VectorEnv, timesteps: int, state: tuple | None = None, desc: str = "interact"
    ) -> tuple[list[EpisodeStats], tuple]:
        """Step every env ``timesteps`` times with the current policy; returns finished episodes and the
        (obs, hidden_state) to continue from. ``state=None`` resets the envs first."""
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
                actions, hidden = policy.get_actions(*self._obs_to_torch(obs), hidden, sample=self.sample_actions)
            obs, _, terminated, truncated, infos = envs.step(actions.cpu().numpy())
            done = np.logical_or(terminated, truncated)
            if done.any():
                hidden = policy.reset_hidden_state(hidden, done)
                episodes += finished_episodes(infos)
        policy.train()
        return episodes, (obs, hidden)

    def collect_new_training_data(self) -> dict[str, float]:
        episodes, self._train_obs = self.interact(
            self.train_envs, self.train_timesteps_per_epoch, self._train_obs, desc=f"epoch {self.epoch} collect"
        )
        self.total_frames += self.train_timesteps_per_epoch * self.parallel_actors * self.accelerator.num_processes
        metrics = summarize_episodes(episodes, "train")
        self.accelerator.wait_for_everyone()
        metrics.update(self.dataset.on_end_of_collection() if self.is_main else {})
        return metrics

    def evaluate_val(self) -> dict[str, float]:
        episodes, _ = self.interact(self.val_envs, self.val_timesteps_per_epoch, None, desc=f"epoch {self.epoch} val")
        return summarize_episodes(episodes, "val")

    def evaluate_test(
        self,
        make_test_env: Callable[[], gym.Env],
        timesteps: int,
        render: bool = False,
        save_trajs_to: str | None = None,
        episodes: int | None = None,
    ) -> dict[str, float]:
        """Roll out the policy on fresh envs for ``timesteps`` steps per actor (or until ``episodes``
        episodes finished); with ``save_trajs_to``, every finished episode is written there as a dataset."""
        if render:
            raise ValueError("render=True is not supported yet; evaluate without rendering")
        envs = make_vector_env(
            make_test_env,
            self.parallel_actors,
            self.env_mode,
            save_trajs_to,
            self.save_trajs_as,
            self.async_env_mp_context,
        )
        try:
            finished: list[EpisodeStats] = []
            state = None
            steps = 0
            while steps < timesteps and (episodes is None or len(finished) < episodes):
                chunk = min(timesteps - steps, 100 if episodes is not None else timesteps)
                eps, state = self.interact(envs, chunk, state, desc="test")
                finished += eps
                steps += chunk
        finally:
            envs.close()
        return summarize_episodes(finished[:episodes] if episodes else finished, "test")

    # ================================================================== learning
    def train_step(self, batch: Batch) -> dict[str, float]:
        with self.accelerator.accumulate(self.agent):
            with self.caster():
                critic_loss, actor_loss, metrics = self.agent(batch)
            loss = self.critic_loss_weight * critic_loss + actor_loss
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                metrics["grad_norm"] = float(self.accelerator.clip_grad_norm_(self.agent.parameters(), self.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.sync_gradients:
            self.policy.soft_sync_targets()
            self.grad_updates += 1
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def learn_epoch(self) -> dict[str, float]:
        self.dataset.refresh_files() if hasattr(self.dataset, "refresh_files") else None
        if not self.dataset.ready_for_training:
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
        n = 0
        for batch in tqdm(loader, desc=f"epoch {self.epoch} train", disable=self._no_bars, leave=False):
            step_metrics = self.train_step(batch.to(self.DEVICE))
            n += 1
            for k, v in step_metrics.items():
                sums[k] += v
            if self.log_interval and n % self.log_interval == 0:
                self.log({f"learn/{k}": v for k, v in step_metrics.items()})
        return {f"learn/{k}": v / n for k, v in sums.items()} if n else {}

    def learn(self) -> dict[str, float]:
        """Run epochs from the current one to ``epochs``; returns the last epoch's metrics."""
        if not self._started:
            self.start()
        metrics: dict[str, float] = {}
        try:
            while self.epoch < self.epochs:
                t0 = time.time()
                metrics = {}
                if self.always_load_latest:
                    self.read_latest_policy()
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
        finally:
            if self._started and self.is_main:
                plot_metrics(self.run_dir)
        return metrics

    def _epoch_line(self, m: dict[str, float]) -> str:
        shown = [f"epoch {self.epoch}/{self.epochs}", f"frames {self.total_frames}", f"updates {self.grad_updates}"]
        for k in ("train/return", "val/return", "val/Success", "learn/critic_loss", "epoch_seconds"):
            if k in m:
                shown.append(f"{k} {m[k]:.3g}")
        return " | ".join(shown)

    def x_axis_metrics(self) -> dict[str, float]:
        return {"epoch": self.epoch, "total_frames": self.total_frames, "grad_updates": self.grad_updates}

    def log(self, metrics: dict[str, float]) -> None:
        if self.is_main and metrics:
            self.logger.log({**metrics, **self.x_axis_metrics()}, step=self.grad_updates)

    # ================================================================== checkpoints
    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, "ckpts")

    def save_checkpoint(self) -> str:
        """Full training state to ``ckpts/training_states/epoch_N`` and policy weights to
        ``ckpts/policy_weights/policy_epoch_N.pt``; both written atomically."""
        self.accelerator.wait_for_everyone()
        final = os.path.join(self.ckpt_dir, "training_states", f"epoch_{self.epoch}")
        if self.is_main:
            state = {
                "agent": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "counters": {"epoch": self.epoch, "total_frames": self.total_frames, "grad_updates": self.grad_updates},
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            }
            tmp = final + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            torch.save(state, os.path.join(tmp, "state.pt"))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _atomic_torch_save(
                self.policy.state_dict(), os.path.join(self.ckpt_dir, "policy_weights", f"policy_epoch_{self.epoch}.pt")
            )
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint_from_path(self, path: str, resume_training_state: bool = True) -> None:
        """Load a training-state folder (``.../epoch_N``) or a policy-weights file (``.pt``)."""
        file = os.path.join(path, "state.pt") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise CheckpointError(f"no checkpoint at {path}")
        try:
            state = torch.load(file, map_location=self.DEVICE, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise CheckpointError(f"{file} is not a readable checkpoint: {type(e).__name__}: {e}") from None
        weights = state["agent"] if isinstance(state, dict) and "agent" in state else state
        try:
            self.policy.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(
                f"{file} was saved from a different model shape; use the gin config of the run that wrote it "
                f"({os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(file))), 'config.gin')}?)\n{e}"
            ) from None
        if resume_training_state and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            c = state["counters"]
            self.epoch, self.total_frames, self.grad_updates = c["epoch"], c["total_frames"], c["grad_updates"]
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])

    def load_checkpoint(self, epoch: int, resume_training_state: bool = True) -> None:
        path = os.path.join(self.ckpt_dir, "training_states", f"epoch_{epoch}")
        if not os.path.isdir(path):
            available = sorted(
                int(n.split("_")[1])
                for n in os.listdir(os.path.join(self.ckpt_dir, "training_states"))
                if n.startswith("epoch_") and not n.endswith(".tmp")
            )
            raise CheckpointError(f"no checkpoint for epoch {epoch} in {self.ckpt_dir}; available epochs: {available}")
        self.load_checkpoint_from_path(path, resume_training_state)

    def write_latest_policy(self) -> None:
        if self.is_main:
            _atomic_torch_save(self.policy.state_dict(), os.path.join(self.ckpt_dir, "latest", "policy.pt"))

    def read_latest_policy(self) -> None:
        path = os.path.join(self.ckpt_dir, "latest", "policy.pt")
        if os.path.exists(path):
            self.load_checkpoint_from_path(path, resume_training_state=False)

    def delete_buffer_from_disk(self) -> None:
        if self.is_main and self.has_dset_edit_rights:
            self.dataset.delete_from_disk()

    def close(self) -> None:
        for envs in (getattr(self, "train_envs", None), getattr(self, "val_envs", None)):
            if envs is not None:
                envs.close()
        if getattr(self, "logger", None) is not None:
            self.logger.finish()


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")


def _atomic_torch_save(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)
