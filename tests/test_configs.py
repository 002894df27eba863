"""Every shipped gin file parses and builds its agent; model-size presets give the published sizes."""

import glob
import os

import gin
import gymnasium as gym
import numpy as np
import pytest

from amago_like import Agent, MultiTaskAgent
from amago_like.cli import REPO_ROOT, apply_gin, is_bound

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.gin"), recursive=True))


def build_agent():
    """The agent the configured Experiment would build, on Meta-World-shaped spaces (no envs started)."""
    bound = is_bound("Experiment.agent_type")
    agent_type = gin.query_parameter("Experiment.agent_type").scoped_configurable_fn if bound else Agent
    max_seq_len = gin.query_parameter("Experiment.max_seq_len") if is_bound("Experiment.max_seq_len") else 64
    return agent_type(
        obs_space=gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (40,), np.float32)}),
        rl2_space=gym.spaces.Box(-np.inf, np.inf, (5,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (4,), np.float32),
        max_seq_len=max_seq_len,
    )


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO_ROOT) for p in CONFIGS])
def test_config_parses_and_builds_its_agent(path):
    apply_gin([path], [])
    agent = build_agent()
    assert sum(p.numel() for p in agent.parameters()) > 0
    if os.path.basename(path).startswith(("ml10", "ml45")):
        assert isinstance(agent, MultiTaskAgent)


def test_amago2_preset_has_the_published_trunk():
    apply_gin([os.path.join(REPO_ROOT, "configs", "models", "amago2_metaworld.gin")], [])
    agent = build_agent()
    enc = agent.traj_encoder
    assert (enc.emb_dim, len(enc.blocks)) == (320, 3)
    assert agent.critics.num_critics == 4 and len(agent.gammas) == 7
