"""What each network sees of a batch's observations: one feature array per network (image
agents, where each network has its own encoder) or the observation itself (state vectors);
see docs/data.md ("Image encoders").
"""

from __future__ import annotations

import jax


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
