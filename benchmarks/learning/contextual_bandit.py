"""A check below meta-RL: can the agent learn a continuous action from what it sees?

    python benchmarks/learning/contextual_bandit.py [--seeds 0] [--epochs 5] [--gin BINDING ...]

Every step shows a target c, drawn uniformly from [-0.8, 0.8]^2, and pays -|a - c| for the 2-D action a; 75
steps per episode, nothing to remember or infer. The answer is in the observation, so a learner that fails
here fails continuous control itself, not meta-learning. It trains with the learning suite's machinery
(``suite.run_task``: the default agent, only env, context, budget and actors bound; point_dense's context and
actors, 100 updates and 75 steps per actor per epoch) and prints the held-out return beside three references:
the best (0), always acting a = 0 (about -46) and uniform random actions (about -71, the score's 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import gymnasium as gym
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402

STEPS = 75
RANDOM_RETURN, ZERO_ACTION_RETURN = -70.9, -45.8  # Monte Carlo estimates of uniform actions and of a = 0


class ContextualBandit(gym.Env):
    """Observation [c_x, c_y, 0]; action Box(-1, 1, (2,)); reward -|a - c|; a new c every step."""

    def __init__(self, split: str = "train"):
        self.observation_space = gym.spaces.Box(-3.0, 3.0, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.target = np.zeros(2)
        self._t = 0

    def _observe(self) -> np.ndarray:
        self.target = self.np_random.uniform(-0.8, 0.8, 2)
        return np.array([*self.target, 0.0], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._observe(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        reward = -float(np.linalg.norm(action - self.target))
        self._t += 1
        return self._observe(), reward, self._t >= STEPS, False, {}


def main(argv: list[str] | None = None) -> list[suite.Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of 100 updates (default: %(default)s)")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING")
    parser.add_argument("--out", default="runs/contextual_bandit")
    args = parser.parse_args(argv)
    task = dataclasses.replace(
        suite.TASKS["point_dense"],
        name="contextual_bandit",
        kind="continuous, target in the observation, 75 steps",
        make_env=ContextualBandit,
        budget=suite.Budget(args.epochs, 75, 100),
        bounds=(RANDOM_RETURN, 0.0),
    )
    results = []
    for seed in args.seeds:
        result = suite.run_task(task, seed, args.out, bindings=args.gin)
        results.append(result)
        print(
            f"seed {seed}: return {result.ret:.1f} after {result.updates} updates, {result.env_steps} env steps "
            f"(best 0, a = 0 {ZERO_ACTION_RETURN}, random {RANDOM_RETURN}; score {result.score:.3f})",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
