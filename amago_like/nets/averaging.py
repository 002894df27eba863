"""Polyak (exponential moving) averages of modules' weights: the agent's target critics and target actor, and the
averaged policy its rollouts can act with."""

from __future__ import annotations

import copy

import torch
from torch import nn


def polyak_(average: nn.Module, live: nn.Module, rate: float | torch.Tensor) -> None:
    """``average += rate * (live - average)`` over every parameter, in one multi-tensor lerp (per-tensor lerps are
    a kernel launch each on a GPU). A module without parameters (IdentityTrajEncoder) has nothing to average."""
    averaged = list(average.parameters())
    if averaged:
        torch._foreach_lerp_(averaged, list(live.parameters()), rate)


class AveragedPolicy(nn.Module):
    """A Polyak average of the modules a policy acts with, at ``rate`` per update; until 1/rate updates have
    passed it is the plain mean of every update so far (a fixed rate from the start would keep the untrained
    weights' share large for the first ~1/rate updates). Persistent buffers (an encoder's input statistics) are
    copied from the live modules, not averaged; non-persistent ones (position tables) are fixed and left alone.
    ``parts`` holds the averaged copies under the live modules' names."""

    def __init__(self, live: dict[str, nn.Module], rate: float):
        super().__init__()
        self.rate = rate
        self.parts = nn.ModuleDict({name: copy.deepcopy(m).requires_grad_(False) for name, m in live.items()})
        # names, not tensors: .to() replaces a module's buffer tensors
        self.copied_buffers = {
            name: [b for b, _ in m.named_buffers() if b in m.state_dict()] for name, m in live.items()
        }
        # a tensor on the weights' device, so the update never waits for the device to read it back
        self.register_buffer("updates", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def update_(self, live: dict[str, nn.Module]) -> None:
        self.updates += 1
        rate = torch.clamp(1.0 / self.updates, min=self.rate)
        for name, module in live.items():
            polyak_(self.parts[name], module, rate)
            buffers = self.copied_buffers[name]
            if buffers:
                averaged = self.parts[name]
                torch._foreach_copy_([averaged.get_buffer(b) for b in buffers], [module.get_buffer(b) for b in buffers])
