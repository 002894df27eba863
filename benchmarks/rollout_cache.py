"""Per-step rollout inference time: the KV cache against recomputing the whole context.

For N parallel actors (default 12) at a full context of S timesteps, one rollout step is
  cache:     ``Agent.get_actions`` on the new timestep with the KVCache (attend over S cached keys);
  recompute: ``Agent.encode`` over the last S timesteps of every actor + the actor head on the
             last state (what a cache-free rollout must do every step).
The cache starts full (a ring of S random keys/values per layer and actor): step time depends
only on its size, not its contents, so it is not filled step by step.

Target: cache >= 10x faster than recompute at context 1024.

On CPU the default model is small (d_model 64); on GPU it is the AMAGO-2 ML45 trunk
(d_model 320, 3 layers, 8 heads, d_ff 1280, FF timestep encoder 512 -> 256).

    python benchmarks/rollout_cache.py                    # contexts 256, 1024, 2048
    python benchmarks/rollout_cache.py --full --contexts 256,1024 --dtype bf16
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

from amago_like.agents import Agent
from amago_like.nets.traj_encoders import TformerTrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder

OBS_DIM, ACTION_DIM = 39, 4
ML45 = dict(d_model=320, n_layers=3, n_heads=8, d_ff=1280, tstep_hidden=512, tstep_out=256)
CPU_SMALL = dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, tstep_hidden=128, tstep_out=64)


def build_agent(size: dict, context: int, device: torch.device) -> Agent:
    return (
        Agent(
            obs_space=gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)}),
            rl2_space=gym.spaces.Box(-np.inf, np.inf, (1 + ACTION_DIM,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (ACTION_DIM,), np.float32),
            max_seq_len=context,
            tstep_encoder_type=functools.partial(
                FFTstepEncoder, d_hidden=size["tstep_hidden"], d_output=size["tstep_out"]
            ),
            traj_encoder_type=functools.partial(
                TformerTrajEncoder,
                d_model=size["d_model"],
                n_layers=size["n_layers"],
                n_heads=size["n_heads"],
                d_ff=size["d_ff"],
                max_time_idx=max(5000, 2 * context),
            ),
        )
        .to(device)
        .eval()
    )


def _timed(fn, reps: int, cuda: bool) -> float:
    """Median seconds of one call over reps calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def bench(context: int, actors: int, size: dict, device: torch.device, dtype: str, reps: int) -> tuple[float, float]:
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    agent = build_agent(size, context, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    obs = {"observation": torch.randn(actors, context, OBS_DIM, device=device)}
    rl2s = torch.randn(actors, context, 1 + ACTION_DIM, device=device)
    times = torch.arange(context, device=device).view(1, context, 1).expand(actors, context, 1)

    hidden = agent.init_hidden_state(actors, device)
    hidden.k.normal_(), hidden.v.normal_()
    hidden.n.fill_(context)  # a full ring: every step attends over `context` keys per layer
    last = {k: v[:, -1:] for k, v in obs.items()}

    def cached_step():
        with autocast:
            agent.get_actions(last, rl2s[:, -1:], times[:, -1:], hidden)

    def recompute_step():
        with autocast:
            states, _ = agent.encode(obs, rl2s, times)  # (N, S, D)
            agent.actor(states[:, -1]).sample(1)

    t_cache = _timed(cached_step, reps, cuda)
    t_full = _timed(recompute_step, max(3, reps // 10) if not cuda else reps, cuda)
    return t_cache, t_full


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="256,1024,2048")
    parser.add_argument("--actors", type=int, default=12)
    parser.add_argument("--full", action="store_true", help="ML45 trunk even on CPU")
    parser.add_argument("--small", action="store_true", help="the small CPU model even on GPU")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=None, help="timed cache steps (default 200 GPU / 30 CPU)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    size = ML45 if (args.full or (cuda and not args.small)) else CPU_SMALL
    reps = args.reps or (200 if cuda else 30)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where} | torch {torch.__version__} | {args.dtype}")
    print(
        f"model ({'ML45' if size is ML45 else 'small'}): tstep {OBS_DIM + 1 + ACTION_DIM}->{size['tstep_hidden']}"
        f"->{size['tstep_out']}, d_model {size['d_model']} x {size['n_layers']} layers, {size['n_heads']} heads, "
        f"d_ff {size['d_ff']} | {args.actors} actors, median step time"
    )
    print()
    print("| context | cache ms/step | recompute ms/step | speed-up |")
    print("|---|---|---|---|")
    for context in (int(c) for c in args.contexts.split(",")):
        t_cache, t_full = bench(context, args.actors, size, device, args.dtype, reps)
        print(f"| {context} | {1000 * t_cache:.2f} | {1000 * t_full:.1f} | {t_full / t_cache:.0f}x |", flush=True)
    print("\ntarget: cache >= 10x faster than recompute at context 1024")


if __name__ == "__main__":
    main()
