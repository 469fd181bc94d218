"""Networks: the MLP every agent is built from, and ensembles of it (docs/method.md).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def default_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


class MLP(nn.Module):
    """Dense -> GELU -> (LayerNorm) per hidden layer, then a linear output layer."""

    hidden: Sequence[int]
    out_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width, kernel_init=default_init())(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return nn.Dense(self.out_dim, kernel_init=default_init())(x)


class ConcatMLP(nn.Module):
    """An MLP over the concatenation of its inputs, e.g. `[s, z, t, h]` or `[s, a]`."""

    hidden: Sequence[int]
    out_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, *inputs: jnp.ndarray) -> jnp.ndarray:
        x = jnp.concatenate(inputs, axis=-1)
        return MLP(self.hidden, self.out_dim, self.layer_norm)(x)


class Ensemble(nn.Module):
    """`size` independent copies of `ConcatMLP` evaluated on the same inputs.

    Returns an array with a leading ensemble axis; the parameters are stacked along it, so
    one Dense kernel per layer serves all members (a batched matmul, not a Python loop).
    """

    hidden: Sequence[int]
    out_dim: int
    size: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, *inputs: jnp.ndarray) -> jnp.ndarray:
        members = nn.vmap(
            ConcatMLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.size,
        )
        return members(self.hidden, self.out_dim, self.layer_norm)(*inputs)
