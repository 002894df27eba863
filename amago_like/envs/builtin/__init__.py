"""Built-in environments.

Importing this package is cheap: Meta-World itself is only imported when a
Meta-World environment or benchmark is first constructed.
"""

from amago_like.envs.builtin.metaworld import (
    KEpisodeMetaworld,
    Metaworld,
    get_benchmark,
)

__all__ = ["KEpisodeMetaworld", "Metaworld", "get_benchmark"]
