"""The online replay buffer: the offline dataset plus the online episodes, on the device, in the row
layout of `lps.data.sampler`; see docs/offline-to-online.md.

Fixed capacity, allocated once (one compiled update, a fixed checkpoint layout): rows
[0, num_offline_rows) are the offline data, finished online episodes are appended after them
(`append`), and episodes still being played sit in a staging area (`stage`) whose chunks are
sampled as soon as they fit. `starts` lists the rows where a whole chunk fits in its episode.
`sample` mixes the sources as `buffer` (uniform over all chunks) or `balanced` (half online).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lps.data.frames import episode_first_rows
from lps.data.sampler import chunk_starts, gather_chunks
from lps.host import available_memory_bytes

Mix = Literal["buffer", "balanced"]
MIXES: tuple[str, ...] = ("buffer", "balanced")


class ReplayBuffer(struct.PyTreeNode):
    observations: Any  # pytree of (capacity, ...) arrays; rows past num_rows are zeros
    actions: jax.Array  # (capacity, action_dim)
    rewards: jax.Array  # (capacity,)
    masks: jax.Array  # (capacity,)
    starts: jax.Array  # (capacity,) int32 chunk starts; the first num_starts are valid
    num_rows: jax.Array  # int32 scalar: rows written
    num_starts: jax.Array  # int32 scalar
    num_offline_rows: jax.Array  # int32 scalar
    num_offline_starts: jax.Array  # int32 scalar
    staging_start: jax.Array  # int32 scalar: rows from here on hold the episodes in progress
    # --frame-stack K > 1: each row's episode's first row, to stack frames (see lps.data.sampler)
    first_rows: jax.Array | None = None
    frame_stack: int = struct.field(pytree_node=False, default=1)
    # (capacity,) float32, with create(bc_weights=True): 1 where the base policy clones the row's
    # action (the offline data, successful episodes, operator takeovers), 0 where only the critic
    # learns from it (the learner's failed episodes); batches then carry "bc_weights"
    bc_weights: jax.Array | None = None

    @property
    def capacity(self) -> int:
        return int(self.actions.shape[0])


def row_bytes(observation_example: Any, action_dim: int) -> int:
    """Bytes one row takes: its observation (a pytree of per-row arrays), action, reward, mask
    and chunk-start entry."""
    obs = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(observation_example))
    return int(obs + 4 * action_dim + 4 + 4 + 4)


def check_fits(capacity: int, bytes_per_row: int, available: int | None, where: str) -> int:
    """The buffer's size in bytes; raises MemoryError, with the size it would need, when it would
    take more than 80 % of `available` bytes (None: unknown, not checked)."""
    needed = capacity * bytes_per_row
    if available is not None and needed > 0.8 * available:
        raise MemoryError(
            f"the online replay buffer would need {needed / 2**30:.2f} GiB ({capacity} rows x {bytes_per_row} bytes) "
            f"but {where} has {available / 2**30:.2f} GiB available; use fewer --online-steps or less offline data"
        )
    return needed


def device_memory_bytes(device=None) -> tuple[int | None, str]:
    """Memory free for the buffer on `device` (an accelerator's limit minus what is in use, or the
    host's available memory for a CPU) and the device's name for messages."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (not every backend reports memory)
        pass
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"{device.platform} device {device.id}"
    return available_memory_bytes(), "this machine"


def create(dataset: dict[str, np.ndarray], chunk_len: int, capacity: int, staging_rows: int = 0,
           frame_stack: int = 1, bc_weights: bool = False) -> ReplayBuffer:  # fmt: skip
    """A buffer of `capacity` rows holding the validated row-layout `dataset` (see
    `lps.data.validate`) in its first rows; its last `staging_rows` rows are the staging area.
    With `frame_stack` K > 1 its batches stack each observation's last K frames; with
    `bc_weights`, rows carry a cloning weight (the dataset's rows: 1; see `ReplayBuffer`)."""
    n = len(dataset["actions"])
    if capacity - staging_rows < n:
        raise ValueError(f"replay capacity {capacity - staging_rows} is smaller than the offline data's {n} rows")
    starts = chunk_starts(np.asarray(dataset["terminals"], bool), chunk_len)

    def padded(x, dtype):
        return jnp.asarray(padded_rows(x, capacity, dtype=dtype))

    return ReplayBuffer(
        # uint8 images stay uint8 (a quarter of float32's memory; the encoder scales them), as offline.
        observations=jax.tree_util.tree_map(lambda x: padded(x, _row_dtype(x)), dataset["observations"]),
        actions=padded(dataset["actions"], np.float32),
        rewards=padded(dataset["rewards"], np.float32),
        masks=padded(dataset["masks"], np.float32),
        starts=padded(starts, np.int32),
        num_rows=jnp.asarray(n, jnp.int32),
        num_starts=jnp.asarray(len(starts), jnp.int32),
        num_offline_rows=jnp.asarray(n, jnp.int32),
        num_offline_starts=jnp.asarray(len(starts), jnp.int32),
        staging_start=jnp.asarray(capacity - staging_rows, jnp.int32),
        first_rows=padded(episode_first_rows(dataset["terminals"]), np.int32) if frame_stack > 1 else None,
        frame_stack=frame_stack,
        bc_weights=padded(np.ones(n), np.float32) if bc_weights else None,
    )


def padded_rows(x, rows: int, fill=0, dtype=None) -> np.ndarray:
    """`x` (rows first) as the first rows of an array of `rows` rows, the others `fill`."""
    x = np.asarray(x, dtype)
    out = np.full((rows, *x.shape[1:]), fill, x.dtype)
    out[: len(x)] = x
    return out


def _row_dtype(x) -> type:
    return np.uint8 if np.asarray(x).dtype == np.uint8 else np.float32


@partial(jax.jit, donate_argnums=0)
def _write(buffer: ReplayBuffer, block: dict, num_rows: jax.Array, block_starts: jax.Array,
           num_block_starts: jax.Array) -> ReplayBuffer:  # fmt: skip
    """Write the first `num_rows` rows of a padded block after the buffer's rows, and its first
    `num_block_starts` chunk starts (relative to the block) after the buffer's starts. Padding is
    dropped: its rows are sent to an index past the end."""
    capacity = buffer.actions.shape[0]
    size = block["actions"].shape[0]
    offsets = jnp.arange(size)
    rows = jnp.where(offsets < num_rows, buffer.num_rows + offsets, capacity)
    slots = jnp.where(offsets < num_block_starts, buffer.num_starts + offsets, capacity)

    def put(dest, values):
        return dest.at[rows].set(values.astype(dest.dtype), mode="drop")

    return buffer.replace(
        observations=jax.tree_util.tree_map(put, buffer.observations, block["observations"]),
        actions=put(buffer.actions, block["actions"]),
        rewards=put(buffer.rewards, block["rewards"]),
        masks=put(buffer.masks, block["masks"]),
        starts=buffer.starts.at[slots].set(buffer.num_rows + block_starts, mode="drop"),
        num_rows=buffer.num_rows + num_rows,
        num_starts=buffer.num_starts + num_block_starts,
        first_rows=None if buffer.first_rows is None else put(buffer.first_rows, buffer.num_rows + block["first_rows"]),
        bc_weights=None if buffer.bc_weights is None else put(buffer.bc_weights, block["bc_weights"]),
    )


def append(buffer: ReplayBuffer, episodes: dict[str, Any], chunk_len: int, block_rows: int) -> ReplayBuffer:
    """Append whole episodes (row-layout host arrays with `terminals`, the last row ending an
    episode), padded to `block_rows` rows so one compiled write serves every call."""
    n = len(episodes["actions"])
    if n > block_rows:
        raise ValueError(f"an append of {n} rows exceeds the block size {block_rows}")
    used, room = int(buffer.num_rows), int(buffer.staging_start)
    if used + n > room:
        raise MemoryError(f"the replay buffer is full ({used} of {room} rows, {n} more to add)")
    terminals = np.asarray(episodes["terminals"], bool)
    if n and not terminals[-1]:
        raise ValueError("appended rows must end with a whole episode (terminals[-1] = 1)")
    starts = chunk_starts(terminals, chunk_len) if n else np.zeros(0, np.int32)

    def pad(x):
        return padded_rows(x, block_rows)

    block = {
        "observations": jax.tree_util.tree_map(pad, episodes["observations"]),
        **{k: pad(episodes[k]) for k in ("actions", "rewards", "masks")},
        "first_rows": pad(episode_first_rows(terminals)),  # relative to the block
        "bc_weights": pad(np.asarray(episodes.get("bc_weights", np.ones(n)), np.float32)),
    }
    return _write(buffer, block, jnp.asarray(n, jnp.int32), jnp.asarray(pad(starts.astype(np.int32))),
                  jnp.asarray(len(starts), jnp.int32))  # fmt: skip


@partial(jax.jit, donate_argnums=0)
def drop_oldest_online(buffer: ReplayBuffer, rows: jax.Array, starts: jax.Array) -> ReplayBuffer:
    """The buffer without its oldest online rows: the first `rows` rows after the offline data
    (whole episodes, holding `starts` chunk starts) are dropped and the later ones move up; the
    offline data stays. For a buffer without a staging area (the learner's)."""
    capacity = buffer.actions.shape[0]
    index = jnp.arange(capacity)
    online_row = index >= buffer.num_offline_rows
    source = jnp.where(online_row, jnp.minimum(index + rows, capacity - 1), index)
    online_start = index >= buffer.num_offline_starts
    start_source = jnp.where(online_start, jnp.minimum(index + starts, capacity - 1), index)

    def move(x):
        return x[source]

    return buffer.replace(
        observations=jax.tree_util.tree_map(move, buffer.observations),
        actions=move(buffer.actions),
        rewards=move(buffer.rewards),
        masks=move(buffer.masks),
        starts=jnp.where(online_start, buffer.starts[start_source] - rows, buffer.starts),
        num_rows=buffer.num_rows - rows,
        num_starts=buffer.num_starts - starts,
        first_rows=None if buffer.first_rows is None else jnp.where(online_row, move(buffer.first_rows) - rows, buffer.first_rows),
        bc_weights=None if buffer.bc_weights is None else move(buffer.bc_weights),
    )


@partial(jax.jit, donate_argnums=0)
def _write_staging(buffer: ReplayBuffer, rows: jax.Array, block: dict, starts: jax.Array, first_start: jax.Array,
                   num_new_starts: jax.Array) -> ReplayBuffer:  # fmt: skip
    """Write a padded block of staged rows at the buffer rows `rows` (padding: an index past the
    end, dropped) and the staged chunk starts after the first `first_start` starts."""
    capacity = buffer.actions.shape[0]
    offsets = jnp.arange(starts.shape[0])
    slots = jnp.where(offsets < num_new_starts, first_start + offsets, capacity)

    def put(dest, values):
        return dest.at[rows].set(values.astype(dest.dtype), mode="drop")

    return buffer.replace(
        observations=jax.tree_util.tree_map(put, buffer.observations, block["observations"]),
        actions=put(buffer.actions, block["actions"]),
        rewards=put(buffer.rewards, block["rewards"]),
        masks=put(buffer.masks, block["masks"]),
        starts=buffer.starts.at[slots].set(starts, mode="drop"),
        num_starts=first_start + num_new_starts,
        first_rows=None if buffer.first_rows is None else put(buffer.first_rows, block["first_rows"]),
        bc_weights=None if buffer.bc_weights is None else put(buffer.bc_weights, jnp.ones_like(block["rewards"])),
    )


def stage(buffer: ReplayBuffer, episodes: list[dict[str, Any]], first_start: int, chunk_len: int,
          since: list[int] | None = None) -> ReplayBuffer:  # fmt: skip
    """Write the episodes in progress (row layout so far, the last row being the latest
    observation, marked as a terminal) into the staging area, one segment each, and list their
    chunks that fit after the first `first_start` (committed) starts. An empty list unstages.

    `since[k]`: episode k's rows before this one are already staged as they are (the online
    phase passes the previous call's row count minus one: that last row gains its action,
    reward and mask), so only the rows that changed travel to the device, not the whole
    episodes each round."""
    rows = buffer.capacity - int(buffer.staging_start)
    if not episodes:
        return buffer.replace(num_starts=jnp.asarray(first_start, jnp.int32))
    segment = rows // len(episodes)
    since = since or [0] * len(episodes)
    staging_start = int(buffer.staging_start)
    targets, parts, starts = [], [], []
    for k, (ep, first) in enumerate(zip(episodes, since)):
        n = len(ep["actions"])
        if n > segment:
            raise ValueError(f"an episode of {n} rows exceeds its staging segment of {segment}")
        base = staging_start + k * segment
        targets.append(np.arange(base + first, base + n))
        parts.append({"observations": jax.tree_util.tree_map(lambda x: np.asarray(x)[first:n], ep["observations"]),
                      **{key: np.asarray(ep[key][first:n], np.float32) for key in ("actions", "rewards", "masks")},
                      "first_rows": np.full(n - first, base, np.int32)})  # fmt: skip
        starts.append(base + chunk_starts(np.asarray(ep["terminals"], bool), chunk_len))
    changed = sum(len(t) for t in targets)
    # Padded to a power of two (at most the staging area): a few compiled writes serve every round.
    size = min(rows, 1 << max(changed - 1, 0).bit_length())

    block = jax.tree_util.tree_map(lambda *xs: padded_rows(np.concatenate(xs), size), *parts)
    targets = padded_rows(np.concatenate(targets).astype(np.int32), size, fill=buffer.capacity)
    starts = np.concatenate(starts).astype(np.int32)
    return _write_staging(buffer, jnp.asarray(targets), block, jnp.asarray(padded_rows(starts, rows)),
                          jnp.asarray(first_start, jnp.int32), jnp.asarray(len(starts), jnp.int32))  # fmt: skip


def sample_source_rows(buffer: ReplayBuffer, key: jax.Array, batch_size: int, online: bool) -> jax.Array:
    """Chunk start rows drawn only from the offline starts, or only from the online ones (the
    offline ones while there are none): to measure each source apart."""
    n_off, n_all = buffer.num_offline_starts, buffer.num_starts
    low, high = (n_off, jnp.maximum(n_all, n_off + 1)) if online else (0, n_off)
    picks = jax.random.randint(key, (batch_size,), low, high)
    return buffer.starts[jnp.where(picks < n_all, picks, picks % jnp.maximum(n_off, 1))]


def sample_rows(buffer: ReplayBuffer, key: jax.Array, batch_size: int, mix: Mix) -> jax.Array:
    """Chunk start rows for one batch (see the module docstring for the mixes)."""
    if mix == "buffer":
        return buffer.starts[jax.random.randint(key, (batch_size,), 0, buffer.num_starts)]
    if mix != "balanced":
        raise ValueError(f"unknown mix {mix!r}; valid: {', '.join(MIXES)}")
    offline_key, online_key = jax.random.split(key)
    offline = sample_source_rows(buffer, offline_key, batch_size, online=False)
    online = sample_source_rows(buffer, online_key, batch_size, online=True)
    has_online = buffer.num_starts > buffer.num_offline_starts
    take_online = (jnp.arange(batch_size) >= batch_size - batch_size // 2) & has_online
    return jnp.where(take_online, online, offline)


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int, chunk_len: int, gamma: float, mix: Mix = "buffer"):
    """A batch of chunks, as `lps.data.sampler.sample_chunks` gives for offline data."""
    return gather_chunks(buffer, sample_rows(buffer, key, batch_size, mix), chunk_len, gamma)


def make_sampler(mix: Mix):
    """`sample` with the mix fixed: the `sample` argument of `lps.training.update.make_update`."""
    if mix not in MIXES:
        raise ValueError(f"unknown --online-mix {mix!r}; valid: {', '.join(MIXES)}")

    def sampler(buffer, key, batch_size, chunk_len, gamma):
        return sample(buffer, key, batch_size, chunk_len, gamma, mix)

    return sampler
