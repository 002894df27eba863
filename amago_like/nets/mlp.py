"""The one MLP builder of the networks (timestep encoders, trajectory encoders, the actor)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def mlp(d_in: int, hidden: Sequence[int], d_out: int, activation: str = "leaky_relu") -> nn.Sequential:
    """(Linear -> activation) for each width in ``hidden``, then a Linear to ``d_out``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), ACTIVATIONS[activation]()]
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)
