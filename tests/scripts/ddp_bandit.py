"""Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` on CPU.

Trains the tiny meta-bandit experiment for two epochs, then every rank writes a fingerprint of its
weights so the test can check that DDP kept the ranks identical. Then the main process's disk "fills"
during one more checkpoint, and every rank records the error it got (instead of waiting forever). Last,
every rank leaves its process group and records which threads it still runs.
"""

import errno
import json
import os
import sys

import torch

import amago_like.run_dir as run_dir_module
from amago_like import DiskTrajDataset, Experiment, MetaBandit
from amago_like.cli import REPO_ROOT, apply_gin

out = sys.argv[1]
apply_gin([os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")], [])
exp = Experiment(
    run_name="ddp",
    ckpt_base_dir=out,
    max_seq_len=7,
    dataset=DiskTrajDataset(out, "ddp"),
    make_train_env=MetaBandit,
    make_val_env=MetaBandit,
    val_timesteps_per_epoch=12,
    parallel_actors=2,
    env_mode="sync",
    epochs=2,
    train_timesteps_per_epoch=12,
    train_batches_per_epoch=4,
    batch_size=4,
    val_interval=1,
    ckpt_interval=2,
    verbose=False,  # and no seed: the main process draws one for every rank
)


def checkpoint_error(exp: Experiment) -> list[str] | None:
    """[type, message] of the error this rank gets from a checkpoint the main process cannot write."""
    if exp.accelerator.is_main_process:
        run_dir_module.write_synced = full_disk
    try:
        exp.save_checkpoint()
    except Exception as e:
        return [type(e).__name__, str(e)]
    return None


def full_disk(path, write, hint=""):
    raise OSError(errno.ENOSPC, "No space left on device", path)


exp.start()
exp.learn()
params = torch.cat([p.detach().flatten().double() for p in exp.policy.parameters()])
buffers = torch.cat([b.detach().flatten().double() for b in exp.policy.buffers() if b.is_floating_point()])
rank = exp.accelerator.process_index
fingerprint = {
    "num_processes": exp.accelerator.num_processes,
    "distributed_type": str(exp.accelerator.distributed_type),
    "params": params.tolist(),
    "buffers": buffers.tolist(),
    "grad_updates": exp.grad_updates,
    "total_frames": exp.total_frames,
    "seed": exp.seed,
    "checkpoint_error": checkpoint_error(exp),
}
exp.close()
exp.learner.leave_process_group()
if os.path.isdir("/proc/self/task"):  # (Linux) the names of this process's native threads, gloo's among them
    tasks = os.listdir("/proc/self/task")
    fingerprint["threads_after_leaving"] = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(fingerprint, f)
