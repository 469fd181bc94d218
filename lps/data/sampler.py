"""On-device chunk sampling for Q-chunking; see docs/data.md ("Your own dataset").

The dataset lives on the device once, in OGBench's raw row layout (each episode's observations
in order, the final one last): the observation after a chunk starting at row t is row t + H, so
there is no `next_observations` copy. `starts` lists the rows whose chunk stays inside its
episode, and sampling is a gather inside the jitted update. Observations may be a pytree
(`{"state", "image"}`): every leaf is gathered with the same rows, images stay uint8.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lps.data.frames import episode_first_rows, gather_observations


class ChunkData(struct.PyTreeNode):
    observations: Any  # (N, obs_dim) or a pytree of (N, ...) leaves, every row including each episode's final one
    actions: jax.Array  # (N, action_dim)
    rewards: jax.Array  # (N,), reward of the transition leaving row t
    masks: jax.Array  # (N,), 0 where the episode would stop bootstrapping (task solved)
    starts: jax.Array  # (M,), int32 rows where a whole chunk fits in the episode
    # --frame-stack K > 1: each row's episode's first row (int32), to stack frames t-K+1..t (lps.data.frames)
    first_rows: jax.Array | None = None
    frame_stack: int = struct.field(pytree_node=False, default=1)

    @property
    def num_chunks(self) -> int:
        return int(self.starts.shape[0])

    @property
    def obs_dim(self) -> int:
        obs = self.observations["state"] if isinstance(self.observations, dict) else self.observations
        return int(obs.shape[-1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[-1])


def chunk_starts(terminals: np.ndarray, chunk_len: int) -> np.ndarray:
    """Rows t whose chunk t..t+H-1 and following observation t+H lie in t's episode."""
    ends = np.flatnonzero(terminals)  # last row of every episode
    rows = np.arange(len(terminals))
    episode_end = ends[np.minimum(np.searchsorted(ends, rows), len(ends) - 1)]
    return rows[rows + chunk_len <= episode_end].astype(np.int32)


def to_device(dataset: dict[str, np.ndarray], chunk_len: int, frame_stack: int = 1) -> ChunkData:
    """Put a validated row-layout dataset on the (default) device (see `lps.data.validate`)."""
    return jax.tree_util.tree_map(jnp.asarray, chunk_arrays(dataset, chunk_len, frame_stack))


def chunk_arrays(dataset: dict[str, np.ndarray], chunk_len: int, frame_stack: int = 1) -> ChunkData:
    """The ChunkData of a validated row-layout dataset as host arrays, in the dtypes the device
    holds (for placing them on several devices: `lps.training.distributed`)."""
    first_rows = episode_first_rows(dataset["terminals"]) if frame_stack > 1 else None
    return ChunkData(
        observations=jax.tree_util.tree_map(_device_obs, dataset["observations"]),
        actions=np.asarray(dataset["actions"], np.float32),
        rewards=np.asarray(dataset["rewards"], np.float32),
        masks=np.asarray(dataset["masks"], np.float32),
        starts=chunk_starts(dataset["terminals"], chunk_len),
        first_rows=first_rows,
        frame_stack=frame_stack,
    )


def _device_obs(x: np.ndarray) -> np.ndarray:
    """uint8 images stay uint8; everything else becomes float32."""
    x = np.asarray(x)
    return x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


def sample_chunks(data: ChunkData, key: jax.Array, batch_size: int, chunk_len: int, gamma: float) -> dict:
    """A batch of chunks: first observation, the H actions (flattened), the discounted chunk
    reward, the product of the chunk's masks, and the observation after the chunk."""
    rows = data.starts[jax.random.randint(key, (batch_size,), 0, data.starts.shape[0])]
    return gather_chunks(data, rows, chunk_len, gamma)


def gather_chunks(data, rows: jax.Array, chunk_len: int, gamma: float) -> dict:
    """The chunks starting at `rows` (see `sample_chunks`); `data` is a ChunkData or anything with
    its row arrays (the online replay buffer). Observations may be a pytree (dict observations);
    with `data.frame_stack` K > 1 their images hold frames t-K+1..t on the channel axis."""
    batch_size = rows.shape[0]
    chunk_rows = rows[:, None] + jnp.arange(chunk_len)
    discounts = gamma ** jnp.arange(chunk_len, dtype=jnp.float32)

    def observations_at(at):
        return gather_observations(data.observations, at, data.first_rows, data.frame_stack)

    batch = {
        "observations": observations_at(rows),
        "actions": data.actions[chunk_rows].reshape(batch_size, -1),
        "chunk_return": jnp.sum(data.rewards[chunk_rows] * discounts, axis=-1),
        "chunk_mask": jnp.prod(data.masks[chunk_rows], axis=-1),
        "next_observations": observations_at(rows + chunk_len),
    }
    if getattr(data, "bc_weights", None) is not None:  # a chunk is cloned only if all its actions are
        batch["bc_weights"] = jnp.min(data.bc_weights[chunk_rows], axis=-1)
    return batch
