"""The agents: the whole training objective (``agent.py``) and its classification-critic variant (``multitask.py``)."""

from amago_like.agents.agent import Agent
from amago_like.agents.multitask import MultiTaskAgent
from amago_like.nets.values import masked_mean, n_step_targets

__all__ = ["Agent", "MultiTaskAgent", "masked_mean", "n_step_targets"]
