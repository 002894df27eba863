"""The learner: accelerate preparation, optimizer and LR warm-up, compile, the train step with its non-finite
guard, and the syncs between DDP processes. It knows the agent only as a module with ``soft_sync_targets``
and ``param_groups``; the objective itself is the agent's (agents/agent.py)."""

from __future__ import annotations

import functools
import gc
import math
import random
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, broadcast_object_list, gather_object
from torch import nn

if torch.distributed.is_available():
    # loaded before an Accelerator starts a process group: this module binds the default group as a default
    # argument when it is first imported (torch._dynamo imports it while DDP wraps the model), which keeps the
    # group alive past destroy_process_group, so gloo's worker threads outlive the run and can abort a finished
    # rank at interpreter exit ("terminate called without an active exception")
    import torch.distributed.nn.functional  # noqa: F401

from amago_like.io import DiskFullError
from amago_like.run_dir import CheckpointError


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients too many updates in a row."""


def adamw(policy: nn.Module, learning_rate: float, l2_coeff: float, device: torch.device) -> torch.optim.Optimizer:
    """The default optimizer: AdamW over the agent's parameter groups. Its fused kernel (GPU and CPU) updates
    every parameter in one pass instead of a loop of small ops per tensor."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(policy.param_groups(learning_rate), weight_decay=l2_coeff, fused=fused)


#: Experiment.torch_compile's string values: torch.compile modes (True means "default")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(torch_compile: bool | str) -> str | None:
    """The torch.compile mode of ``Experiment.torch_compile`` (None: not compiled)."""
    if torch_compile is False or torch_compile is None:
        return None
    if torch_compile is True:
        return "default"
    if torch_compile in COMPILE_MODES:
        return torch_compile
    raise ValueError(f"Experiment.torch_compile must be True, False or a torch.compile mode from {COMPILE_MODES}, "
                     f"got {torch_compile!r}")  # fmt: skip


def lr_multiplier(step: int, warmup: int, total: int | None = None, decay_to: float | None = None) -> float:
    """The learning rate's factor at optimizer step ``step``: a linear warm-up over ``warmup`` steps, then 1,
    or with ``decay_to`` a cosine from 1 down to ``decay_to`` at step ``total`` (held there after), so that
    the policy a run ends with is not the one its last full-size steps happened to leave."""
    warmup = max(warmup, 1)
    if step < warmup:
        return (step + 1) / warmup
    if decay_to is None or total is None or total <= warmup:
        return 1.0
    progress = min((step - warmup) / (total - warmup), 1.0)
    return decay_to + (1.0 - decay_to) * 0.5 * (1.0 + math.cos(math.pi * progress))


def planned_updates(
    epochs: int, start_learning_at_epoch: int, batches_per_epoch: int, batches_per_update: int = 1
) -> int:
    """Optimizer steps a run of ``epochs`` plans: ``batches_per_epoch`` batches in each epoch from
    ``start_learning_at_epoch`` on, ``batches_per_update`` batches to a step."""
    return (epochs - min(start_learning_at_epoch, epochs)) * batches_per_epoch // batches_per_update


class Learner:
    """Owns the prepared agent, optimizer and LR schedule and the update counters.

    ``optimizer`` must already hold the agent's parameters (build it after moving the agent to its device:
    a fused optimizer needs them there). ``optimizer = None``: a process that only acts (a collector); it
    trains nothing, and its checkpoints hold no optimizer state. ``lr_decay_to``: see :func:`lr_multiplier`, over
    ``total_updates`` optimizer steps (the run's planned count)."""

    def __init__(
        self,
        accelerator: Accelerator,
        agent: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        learning_rate: float,
        l2_coeff: float,
        lr_warmup_steps: int,
        grad_clip: float,
        total_updates: int | None = None,
        lr_decay_to: float | None = None,
        torch_compile: bool | str = False,
        max_bad_updates_in_a_row: int = 20,
        verbose: bool = True,
    ):
        self.accelerator = accelerator
        self.learning_rate, self.l2_coeff, self.grad_clip = learning_rate, l2_coeff, grad_clip
        self.max_bad_updates_in_a_row, self.verbose = max_bad_updates_in_a_row, verbose
        if optimizer is None:
            self.agent, self.optimizer, self.scheduler = accelerator.prepare(agent), None, None
        else:
            factor = functools.partial(lr_multiplier, warmup=lr_warmup_steps, total=total_updates, decay_to=lr_decay_to)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            self.agent, self.optimizer, self.scheduler = accelerator.prepare(agent, optimizer, scheduler)
        self._policy = accelerator.unwrap_model(self.agent)  # once: unwrapping walks every module
        # torch.compile fuses the loss's hundreds of small kernels; without it a GPU update is launch-bound.
        # A mode string (True is "default") picks torch.compile's mode; the CUDA-graph modes also replay the
        # whole loss and its backward as one launch each
        mode = compile_mode(torch_compile)
        self.train_forward = torch.compile(self.agent, mode=mode) if mode else self.agent
        self._mark_graph_step = mode in CUDA_GRAPH_MODES and accelerator.device.type == "cuda"
        self.total_updates = total_updates
        self.grad_updates = 0
        self.bad_updates = 0  # skipped for non-finite loss or gradients, over the whole run
        self._bad_in_a_row = 0

    @property
    def policy(self) -> nn.Module:
        return self._policy

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def leave_process_group(self) -> None:
        """The last call of a multi-process run that ended well (never after a failure: a rank must not wait on
        one that stopped); nothing trains after it. The learner keeps the bare agent instead of its DDP wrapper,
        the accelerator lets go of what it prepared, and the process group is destroyed now, while the interpreter
        is whole: destroyed at the interpreter's exit, gloo's worker threads can abort a rank that finished
        ("terminate called without an active exception")."""
        if self.accelerator.num_processes == 1:
            return
        self.agent = self.train_forward = self._policy
        self.accelerator.free_memory()
        self.accelerator.end_training()
        gc.collect()  # the DDP wrapper sits in reference cycles, and it holds the group

    # ------------------------------------------------------------------ the update
    def train_step(self, batch: Any, compute_loss: Callable[[Any], tuple[torch.Tensor, dict]]) -> dict[str, float]:
        """One batch: ``compute_loss(batch)``, backward and (every ``batches_per_update`` batches) an optimizer
        step. An update whose loss or gradient norm is not finite is skipped and counted (``bad_updates``);
        ``max_bad_updates_in_a_row`` of them raise DivergenceError."""
        if self.optimizer is None:
            raise RuntimeError("this Learner only acts (built without an optimizer, as a collector is): no training")
        acc = self.accelerator
        if self._mark_graph_step:  # the graphs' outputs of the last step (read below) may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        progress = getattr(self.policy, "training_progress", None)  # read by an objective that changes over the run
        if progress is not None and self.total_updates:
            progress.fill_(min(self.grad_updates / self.total_updates, 1.0))
        with acc.accumulate(self.agent):
            loss, metrics = compute_loss(batch)
            acc.backward(loss)
            if acc.sync_gradients:
                metrics["grad_norm"] = acc.clip_grad_norm_(self.agent.parameters(), self.grad_clip)
            metrics = read_scalars({**metrics, "loss": loss})  # the step's one wait for the device
            finite = np.isfinite(metrics.pop("loss")) and np.isfinite(metrics.get("grad_norm", 0.0))
            if not finite:
                self._skip_update()
            else:
                self.optimizer.step()
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if acc.sync_gradients and finite:
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
                f"{self._bad_in_a_row} updates in a row had a non-finite loss or gradient; "
                "stopping before writing a broken checkpoint. Lower learning_rate, check rewards for huge values, "
                "or resume from the last checkpoint."
            )

    # ------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is None:  # an acting process resumes its counters and weights only
            return
        saved, now = len(state["optimizer"]["param_groups"]), len(self.optimizer.param_groups)
        if saved != now:
            raise CheckpointError(
                f"the checkpoint's optimizer has {saved} parameter groups and this agent's has {now}: a setting that "
                "gives parameters their own learning rate (Agent.actor_lr_scale) differs from "
                "the run's; resume with the run's own settings"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_configured_rates()

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

    # ------------------------------------------------------------------ DDP syncs
    def sync_buffers(self) -> None:
        """Copy rank 0's buffers to every process, so that rollouts and checkpoints agree across ranks.

        The running statistics already merge every rank's batches (they all-reduce); this guards
        against any buffer that a rank updated alone."""
        if self.accelerator.num_processes > 1:
            for buf in self.policy.buffers():
                buf.copy_(broadcast(buf.clone(), from_process=0))

    def gather(self, items: list) -> list:
        """Every process's items (each process runs its own actors)."""
        return gather_object(items) if self.accelerator.num_processes > 1 else items

    def mean_across_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        return dict(zip(keys, self.accelerator.reduce(values, reduction="mean").tolist()))


def on_main_process(accelerator: Accelerator, write: Callable[[], Any], what: str) -> Any:
    """Collective: the main process runs ``write()``; if it fails, every rank raises (DiskFullError for a full
    disk, else RuntimeError on the other ranks) instead of waiting for it. Returns what ``write`` returned."""
    accelerator.wait_for_everyone()
    error, result = None, None
    if accelerator.is_main_process:
        try:
            result = write()
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
            f"the main process could not write {what}: {message}"
        )
        err.errno = code
        raise err
    accelerator.wait_for_everyone()
    return result


def read_scalars(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Python floats of 0-dim tensors (and plain numbers), reading the device once rather than per value."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in metrics.items() if not torch.is_tensor(v)}
    if keys:
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values))
    return out


def draw_seed(accelerator: Accelerator) -> int:
    """A fresh seed for a run given none, the same in every process (the main process draws it). From the
    operating system's entropy, so a generator seeded earlier in the process cannot make two runs share it."""
    seed = [secrets.randbelow(2**31)]  # below 2**31: seed + process and epoch offsets still fit numpy's legacy seed
    return int(broadcast_object_list(seed)[0] if accelerator.num_processes > 1 else seed[0])


def seed_rngs(seed: int) -> None:
    """Seed python's, numpy's and torch's generators (those :func:`rng_state` saves)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator's state, for a checkpoint."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
