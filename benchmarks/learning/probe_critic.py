"""What a run's critic thinks of each action: Q(s_t, a) over a grid of 2-D actions, next to the policy.

    python benchmarks/learning/probe_critic.py RUN TRAJ_FILE [--steps 0 5 30] [--grid 5]

RUN is a run folder (its config.gin and latest policy are loaded, as ``amago_like.evaluate`` does); TRAJ_FILE
is one saved trajectory (e.g. from the run's ``buffer/fifo``). For each chosen timestep it prints the policy's
tanh(mean) and pre-tanh std, and the critics' mean Q for ``actor_gamma`` on a grid over [-1, 1]^2 (rows: the
second action from +1 down to -1; columns: the first from -1 to +1). A critic that is nearly linear in the
action, or slopes the wrong way, shows here before the return collapses. Continuous 2-D actions only.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from amago_like.data.batches import collate_windows
from amago_like.data.trajectory import load_trajectory
from amago_like.envs.vector import make_vector_env
from amago_like.evaluate import Evaluator
from amago_like.rollout import Rollout


def action_grid(n: int) -> torch.Tensor:
    """(n * n, 2) actions, row-major: second action from +1 down to -1, first from -1 up to +1."""
    values = np.linspace(-1.0, 1.0, n)
    return torch.tensor([[x, y] for y in values[::-1] for x in values], dtype=torch.float32)


@torch.no_grad()
def probe(run_dir: str, traj_file: str, steps: list[int], n: int = 5, env: str | None = None) -> list[dict]:
    evaluator = Evaluator(run_dir, env=env)
    envs = make_vector_env(evaluator.env_factory("test"), 1, "sync", None)
    try:
        policy = evaluator.build_policy(Rollout(envs, torch.device("cpu")))
    finally:
        envs.close()
    if policy.discrete or policy.multi_binary or policy.action_dim != 2:
        raise SystemExit(f"probe_critic: needs a run with 2-D continuous actions (this one has {policy.action_dim})")
    evaluator.load(policy)
    policy.eval()
    traj = load_trajectory(traj_file)
    batch = collate_windows([traj], len(traj.rews) + 1, shared=False)
    states, _ = policy.encode(batch.obs, batch.rl2s, batch.time_idxs, pad_mask=batch.pad_mask)  # (1, L, D)
    grid = action_grid(n)
    rows = []
    for t in steps:
        s = states[0, t].expand(len(grid), -1)  # (N, D)
        q = policy.q_values(policy.critics(s, grid)).mean(0)[:, policy.actor_gamma_idx]  # (N,)
        dist = policy.actor(states[0, t], gamma_index=policy.actor_gamma_idx)
        rows.append(
            {
                "t": t,
                "policy_action": torch.tanh(dist.mean).tolist(),
                "policy_std": dist.std.tolist(),
                "q": q.view(n, n).numpy(),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("traj_file")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 5, 30], help="timesteps of the trajectory to probe")
    p.add_argument("--grid", type=int, default=5, help="grid points per action dimension")
    p.add_argument("--env", default=None, help="env factory (default: the one in the run's config.gin)")
    args = p.parse_args(argv)
    for row in probe(args.run_dir, args.traj_file, args.steps, args.grid, args.env):
        print(
            f"t={row['t']}  policy tanh(mean)={np.round(row['policy_action'], 2)}  std={np.round(row['policy_std'], 2)}"
        )
        print(np.array2string(np.round(row["q"], 2)))


if __name__ == "__main__":
    main()
