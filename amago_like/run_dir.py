"""The run folder: its paths, fresh run or resume, checkpoints and the latest policy.

```
{ckpt_base_dir}/{run_name}/
  config.gin, config.until_epoch_N.gin       operative gin config (and the one a resume replaced)
  metrics.jsonl, metrics.after_epoch_N.jsonl every logged row (and the rows of epochs a resume redid)
  ckpts/training_states/epoch_N/state.pt     full training state
  ckpts/policy_weights/policy_epoch_N.pt     policy weights of that epoch
  ckpts/latest/policy.pt                     newest policy (actor/learner hand-off)
  wandb_id                                   the id of the run's wandb run (a resume continues that run)
```

Only files: no torch modules, no accelerator. The experiment hands it state dicts and gets them back.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any

import torch

from amago_like.io import atomic_write, atomic_write_bytes, read_bytes, storage_error, torch_writer, write_synced

CKPT_HINT = "set Experiment.keep_checkpoints (e.g. 3) to keep fewer checkpoints"


class CheckpointError(Exception):
    """A checkpoint that is missing or does not fit this experiment."""


class RunExistsError(FileExistsError):
    """A fresh run (nothing loaded) was pointed at a run folder that already holds checkpoints."""


class RunDir:
    """Paths of one run folder and every write into it (the caller decides which process writes)."""

    def __init__(
        self,
        path: str,
        keep_checkpoints: int | None = None,
        metrics_file: str = "metrics.jsonl",
        config_file: str = "config.gin",
    ):
        if keep_checkpoints is not None and keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be None (keep all) or >= 1, got {keep_checkpoints}")
        self.path, self.keep_checkpoints, self.metrics_file = path, keep_checkpoints, metrics_file
        self.ckpts = os.path.join(path, "ckpts")
        self.states = os.path.join(self.ckpts, "training_states")
        self.config = os.path.join(path, config_file)
        self.latest_policy = os.path.join(self.ckpts, "latest", "policy.pt")
        self._replaced_config: bytes | None = None  # what write_config overwrote

    @property
    def metrics(self) -> str:
        return os.path.join(self.path, self.metrics_file)

    def make_folders(self) -> None:
        for sub in ("training_states", "policy_weights", "latest"):
            os.makedirs(os.path.join(self.ckpts, sub), exist_ok=True)

    def state_dir(self, epoch: int) -> str:
        return os.path.join(self.states, f"epoch_{epoch}")

    def policy_weights(self, epoch: int) -> str:
        return os.path.join(self.ckpts, "policy_weights", f"policy_epoch_{epoch}.pt")

    def wandb_id(self) -> str:
        """The id of this folder's wandb run: read from ``wandb_id``, or made and written there the first time."""
        path = os.path.join(self.path, "wandb_id")
        known = (read_bytes(path) or b"").decode().strip()
        if known:
            return known
        made = uuid.uuid4().hex[:16]  # wandb takes ids of letters and digits
        atomic_write_bytes(path, made.encode())
        return made

    # ------------------------------------------------------------------ fresh run or resume
    def checkpoint_epochs(self) -> list[int]:
        """Epochs with a complete training-state checkpoint (half-written ``.tmp`` folders never count)."""
        if not os.path.isdir(self.states):
            return []
        return sorted(
            int(n.removeprefix("epoch_"))
            for n in os.listdir(self.states)
            if n.startswith("epoch_")
            and n.removeprefix("epoch_").isdigit()
            and os.path.exists(os.path.join(self.states, n, "state.pt"))
        )

    def check_fresh(self) -> None:
        """RunExistsError if this folder already holds checkpoints (a fresh run would train over them)."""
        if epochs := self.checkpoint_epochs():
            raise RunExistsError(
                f"{self.path} already holds a run (checkpoints of epochs {epochs}); "
                "starting afresh would overwrite it. Pass --resume to continue it, choose another --run_name, "
                "or delete that folder (and its buffer) to start over (from Python: call load_latest_checkpoint() "
                "before learn() to continue)"
            )

    def write_config(self, text: str) -> None:
        """Write the operative config, remembering the one it replaces (a resume keeps or restores it)."""
        self._replaced_config = read_bytes(self.config)
        atomic_write_bytes(self.config, text.encode())

    def restore_config(self) -> None:
        """Put back the config that :meth:`write_config` replaced (a resume that failed to load)."""
        if self._replaced_config is not None:
            atomic_write_bytes(self.config, self._replaced_config)

    def keep_replaced_config(self, epoch: int) -> None:
        """A resumed run trained an epoch with the new config: keep the one that made epochs 1..``epoch`` as
        ``config.until_epoch_<epoch>.gin`` if it differs."""
        replaced, self._replaced_config = self._replaced_config, None
        if replaced is not None and replaced != read_bytes(self.config):
            atomic_write_bytes(self.config.removesuffix(".gin") + f".until_epoch_{epoch}.gin", replaced)

    def set_aside_metrics_after(self, epoch: int, grad_updates: int) -> None:
        """Move the rows logged after the checkpoint (a later epoch, or more updates; also a last line cut short
        by a kill) from the metrics file to ``metrics.after_epoch_<epoch>.jsonl``, so that every series has
        strictly increasing steps and nothing is deleted. (Rows of files written before epochs were numbered
        from 1 mid-epoch carry the epoch before: the update count catches them.)"""
        data = read_bytes(self.metrics)
        if data is None:
            return
        keep, later = [], []
        for line in data.decode().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                after = row.get("epoch", 0) > epoch or row.get("step", 0) > grad_updates
            except (json.JSONDecodeError, AttributeError):
                after = True
            (later if after else keep).append(line + "\n")
        if not later:
            return
        aside = os.path.join(self.path, f"{self.metrics_file.removesuffix('.jsonl')}.after_epoch_{epoch}.jsonl")
        atomic_write_bytes(aside, (read_bytes(aside) or b"") + "".join(later).encode())
        atomic_write_bytes(self.metrics, "".join(keep).encode())

    # ------------------------------------------------------------------ checkpoints
    def write_checkpoint(self, epoch: int, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> str:
        """``state`` to ``training_states/epoch_N/state.pt`` and ``weights`` to ``policy_epoch_N.pt``.

        Both files are complete on disk before either is renamed into place; a failed write (a full disk:
        DiskFullError) removes both temporary copies and leaves every older checkpoint as it was. Then
        ``keep_checkpoints`` prunes old ones. Returns the training-state folder."""
        final, weights_path = self.state_dir(epoch), self.policy_weights(epoch)
        tmp, weights_tmp = final + ".tmp", weights_path + ".tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            write_synced(os.path.join(tmp, "state.pt"), torch_writer(state), CKPT_HINT)
            write_synced(weights_tmp, torch_writer(weights), CKPT_HINT)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.exists(weights_tmp):
                os.remove(weights_tmp)
            if isinstance(e, OSError):
                raise storage_error(e, tmp, CKPT_HINT) from None
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        os.replace(weights_tmp, weights_path)
        self.prune()
        return final

    def prune(self) -> None:
        if self.keep_checkpoints is None:
            return
        for epoch in self.checkpoint_epochs()[: -self.keep_checkpoints]:
            shutil.rmtree(self.state_dir(epoch), ignore_errors=True)
            if os.path.exists(self.policy_weights(epoch)):
                os.remove(self.policy_weights(epoch))

    def write_latest_policy(self, weights: dict[str, torch.Tensor]) -> None:
        atomic_write(self.latest_policy, torch_writer(weights), CKPT_HINT)


def read_checkpoint(path: str) -> tuple[str, Any, dict[str, torch.Tensor]]:
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


def average_weights(paths: list[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """The mean of several checkpoints' policy weights and the newest file's name. Floating-point entries
    are averaged; integer counters come from the last path."""
    if not paths:
        raise CheckpointError("load_average_weights needs at least one checkpoint path")
    loaded = [read_checkpoint(p) for p in paths]
    newest_file, _, newest = loaded[-1]
    for file, _, weights in loaded[:-1]:
        if weights.keys() != newest.keys() or any(weights[k].shape != v.shape for k, v in newest.items()):
            raise CheckpointError(
                f"{file} and {newest_file} hold different models ({state_mismatch(newest, weights)}); "
                "average checkpoints of one run only"
            )
    mean = {
        k: torch.stack([w[k].float() for _, _, w in loaded]).mean(0).to(v.dtype) if v.is_floating_point() else v
        for k, v in newest.items()
    }
    return f"the average of {len(paths)} checkpoints ending with {newest_file}", mean


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(weights)``, or a CheckpointError saying how the shapes differ."""
    try:
        module.load_state_dict(weights)
    except RuntimeError:
        differences = state_mismatch(module.state_dict(), weights)
        raise CheckpointError(
            f"{source} was saved from a different model shape ({differences}); build the experiment "
            "with the gin config of the run that wrote it (its config.gin)"
        ) from None


def state_mismatch(model: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
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
