"""Two-process CPU DDP through `accelerate launch` (gloo), and loading its checkpoint in one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from amago_like import DiskTrajDataset, Experiment, MetaBandit
from amago_like.cli import REPO_ROOT, apply_gin

SCRIPT = os.path.join(REPO_ROOT, "tests", "scripts", "ddp_bandit.py")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, [json.load(open(out / f"rank{r}.json")) for r in (0, 1)]


def test_the_toy_example_prints_its_results_once_under_ddp(tmp_path):
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(REPO_ROOT, "examples", "toy.py")]
    cmd += ["--buffer_dir", str(tmp_path), "--epochs", "1", "--gin", "Experiment.train_batches_per_epoch = 5"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("held-out return") == 1, proc.stdout
    assert proc.stdout.count("results in") == 1, proc.stdout


def test_two_ranks_train_in_lockstep_with_identical_weights(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0["num_processes"] == r1["num_processes"] == 2
    assert r0["distributed_type"].endswith("MULTI_CPU")
    np.testing.assert_array_equal(r0["params"], r1["params"])
    np.testing.assert_array_equal(r0["buffers"], r1["buffers"])
    # every rank collects with its own actors: 2 ranks x 2 actors x 12 steps x 2 epochs
    assert r0["total_frames"] == r1["total_frames"] == 96
    assert r0["grad_updates"] == r1["grad_updates"] == 8
    assert isinstance(r0["seed"], int) and r0["seed"] == r1["seed"]  # drawn once, shared (each rank adds its index)


def test_a_rank_that_left_its_process_group_runs_no_gloo_threads(ddp_run):
    # left alive to the interpreter's exit, gloo's worker threads could abort a rank whose run ended well
    _, ranks = ddp_run
    if "threads_after_leaving" not in ranks[0]:
        pytest.skip("thread names are read from /proc (Linux)")
    for threads in (r["threads_after_leaving"] for r in ranks):
        assert not [name for name in threads if "gloo" in name], threads


def test_metrics_gather_episodes_from_both_ranks(ddp_run):
    out, _ = ddp_run
    rows = [json.loads(line) for line in open(out / "ddp" / "metrics.jsonl")]
    # 2 ranks x 2 actors x 12 val steps / 6-step meta-episodes; two epochs and the final evaluation
    assert [r["val/episodes"] for r in rows] == [8, 8, 8]
    assert len(os.listdir(out / "ddp" / "buffer" / "fifo")) == 2 * 2 * 2 * 2


def test_checkpoint_from_two_processes_loads_in_one(ddp_run):
    out, (r0, _) = ddp_run
    apply_gin([os.path.join(REPO_ROOT, "configs", "models", "tiny.gin")], [])
    exp = Experiment(
        run_name="ddp",
        ckpt_base_dir=str(out),
        max_seq_len=7,
        dataset=DiskTrajDataset(str(out), "ddp"),
        make_train_env=MetaBandit,
        make_val_env=MetaBandit,
        val_timesteps_per_epoch=6,
        parallel_actors=1,
        env_mode="sync",
        verbose=False,
    )
    exp.start()
    exp.load_checkpoint(2)
    assert (exp.epoch, exp.grad_updates, exp.total_frames) == (2, 8, 96)
    params = torch.cat([p.detach().flatten().double() for p in exp.policy.parameters()])
    np.testing.assert_array_equal(params.numpy(), r0["params"])
    exp.close()


def test_a_checkpoint_the_main_process_cannot_write_stops_every_rank(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0["checkpoint_error"][0] == r1["checkpoint_error"][0] == "DiskFullError"
    assert "disk full" in r0["checkpoint_error"][1]
    assert r1["checkpoint_error"][1].startswith("the main process could not write checkpoint")
