"""Training updates/s and peak memory of the Agent at the AMAGO-2 Meta-World ML45 model size.

One update = what ``Experiment.train_step`` does: the agent's forward (critic + actor losses) under
autocast, backward of ``10 * critic_loss + actor_loss``, grad-norm clipping, reading the metrics (one wait for
the device), an AdamW step (``learner.adamw``, as Experiment builds it: the fused kernel) and the target-critic soft sync, on random ``Batch``es already
on the device (no data loading).

ML45 size (shared ANCHORS): FF timestep encoder 512 -> 256, transformer d_model 320, d_ff 1280,
3 layers, 8 heads, context 256, batch 24, actor/critic MLPs (256, 256), 4 critics, 7 gammas;
Meta-World observations are 39-dim and actions 4-dim. ``MultiTaskAgent`` adds 128 two-hot bins.

Target: >= 100 updates/s at ML45 size in bf16 on one H100.

Peak memory is ``torch.cuda.max_memory_allocated`` on GPU; on CPU it is the peak resident-set
size during the timed updates minus the RSS before the agent was built (sampled every 2 ms),
each row in a fresh process so no row reuses memory an earlier one left in the allocator.

    python benchmarks/model_throughput.py                 # CPU: a small model; GPU: ML45 size
    python benchmarks/model_throughput.py --full          # ML45 size wherever it runs
    python benchmarks/model_throughput.py --dtypes bf16 --agents agent --steps 200
    python benchmarks/model_throughput.py --dtypes bf16 --sdpa auto,flash,math   # which attention kernel
    python benchmarks/model_throughput.py --dtypes bf16 --compile off,on         # eager and torch.compile
    python benchmarks/model_throughput.py --dtypes bf16 --compile on,reduce-overhead   # and with CUDA graphs
    python benchmarks/model_throughput.py --agents agent --gin "Agent.num_actions_for_value = 4"   # one binding

``--sdpa flash`` runs the updates inside ``torch.nn.attention.sdpa_kernel(FLASH_ATTENTION)``: it fails
("No available kernel") if the model's attention cannot use flash attention at that precision.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import gin
import gymnasium as gym
import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from amago_like.agents import Agent, MultiTaskAgent
from amago_like.config import GinBindingError, apply_gin
from amago_like.data.dataset import Batch
from amago_like.learner import COMPILE_MODES, CUDA_GRAPH_MODES, adamw, compile_mode
from amago_like.nets.traj_encoders import TformerTrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder

OBS_DIM, ACTION_DIM = 39, 4
GAMMAS = (0.1, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)
AGENTS = {"agent": Agent, "multitask": MultiTaskAgent}
# --sdpa: which scaled_dot_product_attention kernel the updates may use ("auto": torch chooses)
SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


@dataclass
class Size:
    batch: int
    context: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    tstep_hidden: int
    tstep_out: int
    critics: int


ML45 = Size(
    batch=24, context=256, d_model=320, n_layers=3, n_heads=8, d_ff=1280, tstep_hidden=512, tstep_out=256, critics=4
)
CPU_SMALL = Size(
    batch=8, context=64, d_model=128, n_layers=2, n_heads=4, d_ff=512, tstep_hidden=256, tstep_out=128, critics=4
)


def build_agent(kind: str, size: Size, device: torch.device) -> Agent:
    return AGENTS[kind](
        obs_space=gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)}),
        rl2_space=gym.spaces.Box(-np.inf, np.inf, (1 + ACTION_DIM,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (ACTION_DIM,), np.float32),
        max_seq_len=size.context,
        tstep_encoder_type=functools.partial(FFTstepEncoder, d_hidden=size.tstep_hidden, d_output=size.tstep_out),
        traj_encoder_type=functools.partial(
            TformerTrajEncoder, d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads, d_ff=size.d_ff
        ),
        num_critics=size.critics,
        gammas=GAMMAS,
        actor_gamma=0.99,
    ).to(device)


def random_batch(size: Size, device: torch.device, g: torch.Generator) -> Batch:
    B, L = size.batch, size.context
    return Batch(
        obs={"observation": torch.randn(B, L, OBS_DIM, generator=g)},
        rl2s=torch.randn(B, L, 1 + ACTION_DIM, generator=g),
        time_idxs=torch.arange(L).view(1, L, 1).expand(B, L, 1).clone(),
        pad_mask=torch.ones(B, L, 1, dtype=torch.bool),
        actions=torch.rand(B, L - 1, ACTION_DIM, generator=g) * 2 - 1,
        rews=torch.rand(B, L - 1, 1, generator=g),
        dones=torch.zeros(B, L - 1, 1),
    ).to(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident-set size in a background thread (torch ops release the GIL)."""

    def __enter__(self):
        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def bench(
    kind: str,
    dtype: str,
    size: Size,
    device: torch.device,
    warmup: int,
    steps: int,
    sdpa: str = "auto",
    compiled: bool | str = False,
    bindings: tuple[str, ...] = (),
) -> dict:
    gin.clear_config()  # parsed here, in the process that builds the agent (CPU rows run in a fresh one)
    apply_gin([], list(bindings))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        mem0 = torch.cuda.memory_allocated(device)
    else:
        mem0 = _rss_bytes()
    torch.manual_seed(0)
    agent = build_agent(kind, size, device).train()
    opt = adamw(agent, 5e-4, 1e-3, device)  # as Experiment
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(size, device, g) for _ in range(4)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    mode = compile_mode(compiled)  # as Experiment.torch_compile
    forward = torch.compile(agent, mode=mode) if mode else agent
    graphs = cuda and mode in CUDA_GRAPH_MODES

    def update(batch: Batch) -> None:
        if graphs:  # as Learner.train_step: the last step's graph outputs were read
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            critic_loss, actor_loss, metrics = forward(batch)
        (10.0 * critic_loss + actor_loss).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(agent.parameters(), 1.0)
        torch.stack([grad_norm, *metrics.values()]).tolist()  # Experiment.train_step reads these once per update
        opt.step()
        opt.zero_grad(set_to_none=True)
        agent.soft_sync_targets()

    with sdpa_kernel(SDPA[sdpa]) if sdpa != "auto" else nullcontext():
        for i in range(warmup):
            update(batches[i % len(batches)])
        if cuda:
            torch.cuda.synchronize(device)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            for i in range(steps):
                update(batches[i % len(batches)])
            if cuda:
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - mem0 if cuda else rss.peak - mem0
    params = sum(p.numel() for p in agent.parameters() if p.requires_grad)
    trunk = sum(p.numel() for p in agent.traj_encoder.parameters())
    return dict(agent=kind, dtype=dtype, params=params, trunk=trunk, ups=steps / dt, ms=1000 * dt / steps, mem=peak)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="ML45 sizes even on CPU (slow)")
    parser.add_argument("--small", action="store_true", help="the small CPU sizes even on GPU")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--agents", default="agent,multitask", help=f"comma-separated from {sorted(AGENTS)}")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated from fp32,bf16")
    parser.add_argument(
        "--compile",
        default="off",
        help=f"torch.compile the loss, comma-separated rows from off,on,{','.join(COMPILE_MODES)} (on: default mode)",
    )
    parser.add_argument(
        "--sdpa", default="auto", help=f"attention kernels to force, comma-separated from auto,{','.join(SDPA)}"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed updates (default 100 GPU / 10 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed updates first (default 20 GPU / 3 CPU)")
    for field in Size.__dataclass_fields__:
        parser.add_argument(f"--{field}", type=int, default=None, help="override one size")
    parser.add_argument("--gin", action="append", default=[], help="a gin binding for the agent (repeatable)")
    args = parser.parse_args(argv)
    try:  # a bad binding fails here in one line, not inside a row's process
        apply_gin([], args.gin)
    except GinBindingError as e:
        parser.error(str(e))
    compiles = {"off": False, "on": True, **{m: m for m in COMPILE_MODES}}
    if not set(args.compile.split(",")) <= set(compiles):
        parser.error(f"--compile takes comma-separated values from {','.join(compiles)}; got {args.compile!r}")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    size = ML45 if (args.full or (cuda and not args.small)) else CPU_SMALL
    size = Size(**{f: getattr(args, f) or getattr(size, f) for f in Size.__dataclass_fields__})
    steps = args.steps or (100 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 3)

    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    label = "ML45" if size == ML45 else "custom/small"
    print(f"device: {where} | torch {torch.__version__}")
    print(
        f"model ({label}): tstep {OBS_DIM + 1 + ACTION_DIM}->{size.tstep_hidden}->{size.tstep_out}, "
        f"d_model {size.d_model} x {size.n_layers} layers, {size.n_heads} heads, d_ff {size.d_ff}, "
        f"{size.critics} critics x {len(GAMMAS)} gammas | batch {size.batch} x context {size.context} | "
        f"{warmup} warm-up + {steps} timed updates" + "".join(f" | {b}" for b in args.gin)
    )
    print()
    mem_name = "peak CUDA mem" if cuda else "peak RSS delta"
    print(f"| agent | precision | attention | params (trunk) | updates/s | ms/update | {mem_name} |")
    print("|---|---|---|---|---|---|---|")
    rows = [
        (k, d, a, compiles[c])
        for k in args.agents.split(",")
        for d in args.dtypes.split(",")
        for a in args.sdpa.split(",")
        for c in args.compile.split(",")
    ]
    for kind, dtype, sdpa, compiled in rows:
        if sdpa != "auto" and sdpa not in SDPA:
            parser.error(f"unknown --sdpa {sdpa!r}: choose from auto,{','.join(SDPA)}")
        name = "Agent (PopArt)" if kind == "agent" else "MultiTaskAgent (128 bins)"
        name += f", compiled ({compile_mode(compiled)})" if compiled else ""
        try:
            if cuda:
                r = bench(kind, dtype, size, device, warmup, steps, sdpa, compiled, tuple(args.gin))
            else:  # a fresh process per row: comparable RSS numbers
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    job = pool.submit(bench, kind, dtype, size, device, warmup, steps, sdpa, compiled, tuple(args.gin))
                    r = job.result()
        except RuntimeError as e:  # a forced kernel that cannot run these shapes / this precision
            print(f"| {name} | {dtype} | {sdpa} | failed: {str(e).splitlines()[0][:120]} | | | |", flush=True)
            continue
        print(
            f"| {name} | {dtype} | {sdpa} | {r['params'] / 1e6:.2f}M ({r['trunk'] / 1e6:.2f}M) | {r['ups']:.1f} | "
            f"{r['ms']:.1f} | {r['mem'] / 2**20:.0f} MiB |",
            flush=True,
        )
    if size == ML45 and cuda:
        print("\ntarget: >= 100 updates/s in bf16 on one H100")


if __name__ == "__main__":
    main()
