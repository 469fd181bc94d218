"""What every agent shares: the problem spec it is built for and the interface the trainer uses.

An agent is a frozen dataclass holding its config and the spec (hashable, so it can be a static
argument of `jax.jit`). It provides:

    init(key) -> params                       # dict of network parameter trees
    loss(params, target_params, batch, key)   # -> (scalar, metrics), all losses summed
    act(params, obs, key) -> chunk            # (B, H * A), inside [-1, 1]

`target_keys` names the entries of `params` that get a Polyak-averaged copy (usually the
critic). The optimiser, the target update and the training loop belong to the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import jax


@dataclasses.dataclass(frozen=True)
class Spec:
    """The chunked problem an agent is built for."""

    obs_dim: int  # state-vector dims (0 for image-only observations)
    action_dim: int
    chunk_len: int = 5
    gamma: float = 0.99
    image_shape: tuple[int, ...] | None = None
    """(H, W, C) of image observations (`lps.encoders`), None for state vectors."""

    def __post_init__(self):
        if self.image_shape is not None:  # JSON gives a list; the spec must stay hashable
            object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))

    @property
    def chunk_dim(self) -> int:
        return self.action_dim * self.chunk_len


Params = dict[str, Any]


class Agent(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    target_keys: ClassVar[tuple[str, ...]]
    key_fields: ClassVar[tuple[str, ...]]  # config fields `lps agents` shows
    cfg: Any
    spec: Spec

    def init(self, key: jax.Array) -> Params: ...

    def loss(self, params: Params, target_params: Params, batch: dict, key: jax.Array): ...

    def act(self, params: Params, obs: jax.Array, key: jax.Array) -> jax.Array: ...


def init_module(module, key: jax.Array, *example_inputs):
    """Initialise a Flax module's parameters from example inputs (batch of one)."""
    return module.init(key, *example_inputs)["params"]


def net_obs(obs, net: str, frozen: bool = False):
    """What network `net` sees of an observation. `EncodedAgent` passes one feature array per
    network (`{net: features}`: each network has its own image encoder); state agents pass the
    observation itself. `frozen` stops the gradient where the network's parameters are frozen
    too (the critic inside the actor loss), so that no loss trains a network's encoder that does
    not train the network."""
    x = obs[net] if isinstance(obs, dict) else obs
    return jax.lax.stop_gradient(x) if frozen else x


def batch_size(obs) -> int:
    """Rows of an observation (an array, or one feature array per network)."""
    return jax.tree_util.tree_leaves(obs)[0].shape[0]
