"""Training over several devices and hosts: joining the hosts, the mesh, and where arrays live;
see docs/scaling.md.

One mesh axis, `devices`, carries either the batch (data parallelism; `--shard-params` splits
large arrays FSDP-style) or the vmapped seeds (`--device-axis`). The dataset is placed once,
replicated or split along its rows (`--data-placement`). `initialize` joins the processes of a
SLURM/MPI job (or the `--coordinator-address` ones) before any device is used; each host places
its slice of the data and only process 0 writes (`is_writer`). Checkpoints are gathered to host
arrays, so they load on any device count. With one device and one process the layout is `None`
and nothing here changes what training does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "devices"
# Arrays with fewer elements stay replicated under --shard-params: gathering them would cost
# more in latency than their copies cost in memory (16 KiB of float32).
MIN_SHARDED_ELEMENTS = 4096
# Auto placement shards the dataset when a replica would take more than this share of a device.
REPLICATED_DATA_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    devices: int | Literal["all"] = 1
    """Devices to train on: a count, or all (every local device; with several hosts, every device of
    every host). 1: today's single-device training."""
    device_axis: Literal["auto", "batch", "seeds"] = "auto"
    """What is split over the devices: batch (each device takes an equal share of --batch-size) or
    seeds (each device trains its own seeds); auto: seeds when there are several seeds and the device
    count divides them, else batch."""
    shard_params: bool = False
    """FSDP: split each large parameter and optimiser array over the devices along its largest dimension
    they divide, instead of a full copy per device (--device-axis batch)."""
    data_placement: Literal["auto", "replicated", "sharded"] = "auto"
    """The dataset on several devices: a copy on each, or split along its rows; auto: split when a copy
    would take more than a quarter of one device's memory."""
    coordinator_address: str | None = None
    """Multi-host: host:port of process 0, with --num-processes and --process-id (not needed under
    SLURM or MPI, whose variables jax reads)."""
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        if self.devices != "all" and (not isinstance(self.devices, int) or self.devices <= 0):
            raise ValueError(f"--devices must be a positive count or 'all', got {self.devices!r}")
        explicit = (self.coordinator_address, self.num_processes, self.process_id)
        if any(x is not None for x in explicit) and any(x is None for x in explicit):
            raise ValueError(
                "--coordinator-address, --num-processes and --process-id go together (or none of them, "
                "under SLURM or MPI)"
            )
        if self.num_processes is not None and not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"--process-id must be in [0, --num-processes) = [0, {self.num_processes}), got {self.process_id}"
            )


# --- joining the hosts ----------------------------------------------------------------------


def launcher(environ=os.environ) -> str | None:
    """The cluster launcher that started this process as one of several, if any."""
    # The step's task count, not the job's: a batch script of a many-task job is one process.
    if int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_PROCID" in environ:
        return "SLURM"
    if int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "Open MPI"
    if int(environ.get("PMI_SIZE", "1") or 1) > 1:
        return "MPI"
    return None


_joined = False


def initialize(cfg: DistributedConfig) -> None:
    """Join the other processes of a multi-host run (a no-op for a single process, and on a second
    call). Must come before anything uses a device: jax fixes its device list at first use."""
    global _joined
    if _joined:
        return
    if cfg.coordinator_address is not None:
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    elif launcher() is not None:
        jax.distributed.initialize()  # the coordinator, count and rank come from the launcher's variables
    else:
        return
    _joined = True
    print(f"[lps] process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
          f"device(s), {jax.device_count()} in all")  # fmt: skip


def is_writer() -> bool:
    """Whether this process writes the run directory (process 0; the only one without hosts)."""
    return jax.process_index() == 0


# --- the layout -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's state, data and batches live on the mesh."""

    mesh: Mesh
    axis: Literal["batch", "seeds"]
    shard_params: bool
    shard_data: bool
    num_seeds: int

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def _sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @property
    def replicated(self) -> NamedSharding:
        return self._sharding(P())

    @property
    def batch_sharding(self) -> NamedSharding | None:
        """The sampled batch, split along its first axis (None: the batch is not split)."""
        return self._sharding(P(AXIS)) if self.axis == "batch" else None

    def fit_data(self, data_bytes: int, placement: str) -> Layout:
        """This layout with the dataset's placement decided (`--data-placement`; auto by its size)."""
        return dataclasses.replace(self, shard_data=_shard_data(placement, list(self.mesh.devices.flat), data_bytes))

    def state_shardings(self, state):
        return jax.tree_util.tree_map(self._leaf_sharding, state)

    def _leaf_sharding(self, x) -> NamedSharding:
        shape = np.shape(x)
        if self.axis == "seeds":
            return self._sharding(P(AXIS))
        if not self.shard_params or int(np.prod(shape)) < MIN_SHARDED_ELEMENTS:
            return self.replicated
        first = 1 if self.num_seeds > 1 else 0  # the seed axis stays whole
        dims = [d for d in range(first, len(shape)) if shape[d] % self.num_devices == 0]
        if not dims:
            return self.replicated
        dim = max(dims, key=lambda d: shape[d])
        return self._sharding(P(*([None] * dim), AXIS))

    def data_shardings(self, data):
        """Row arrays split over the devices when the data is sharded; `starts` and the frame
        stack's `first_rows` (small int32) replicated."""
        rows = self._sharding(P(AXIS)) if self.shard_data else self.replicated
        return data.replace(
            observations=jax.tree_util.tree_map(lambda _: rows, data.observations),
            actions=rows,
            rewards=rows,
            masks=rows,
            starts=self.replicated,
            first_rows=None if data.first_rows is None else self.replicated,
        )

    def update_shardings(self, state, data) -> tuple[Any, Any]:
        """(in_shardings, out_shardings) of the compiled update `(state, data) -> (state, metrics)`."""
        state_shardings = self.state_shardings(state)
        return (state_shardings, self.data_shardings(data)), (state_shardings, self.replicated)

    # --- placing and gathering ---

    def place_state(self, state):
        """Put a state (host or device arrays; every process holds all of it) on the mesh."""
        return jax.tree_util.tree_map(_place, state, self.state_shardings(state))

    def place_data(self, data):
        """Put a ChunkData of host arrays on the mesh, each process supplying only the rows its
        devices hold (all rows when replicated). Sharded row arrays are padded to a multiple of the
        device count; padded rows start no chunk (`starts` never names them), so none is sampled."""
        if self.shard_data:
            pad = -data.actions.shape[0] % self.num_devices
            data = data.replace(**{
                name: jax.tree_util.tree_map(lambda x: _pad_rows(x, pad), getattr(data, name))
                for name in ("observations", "actions", "rewards", "masks")
            })  # fmt: skip
        return jax.tree_util.tree_map(_place, data, self.data_shardings(data))


def _pad_rows(x: np.ndarray, pad: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x


def process_block(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The block of a global array of `shape` that this process's devices hold under `sharding`:
    per dimension, from the first to the last index they hold (everything when nothing is split,
    or with one process). A process's devices are contiguous on the mesh, so this is exactly its part."""
    indices = list(sharding.addressable_devices_indices_map(shape).values())
    return tuple(
        slice(min(index[d].indices(size)[0] for index in indices), max(index[d].indices(size)[1] for index in indices))
        for d, size in enumerate(shape)
    )


def _place(x, sharding: NamedSharding) -> jax.Array:
    x = np.asarray(x)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x[process_block(sharding, x.shape)], x.shape)


def gather(tree):
    """A pytree of (possibly sharded, possibly multi-host) arrays as host numpy arrays, whole. Every
    process must call it: parts held by other hosts are fetched with a collective."""
    return jax.tree_util.tree_map(_to_host, tree)


def _to_host(x) -> np.ndarray:
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# --- choosing the layout --------------------------------------------------------------------


def make_layout(cfg: DistributedConfig, num_seeds: int, batch_size: int) -> Layout | None:
    """The layout a run's config asks for, or None for one device in one process (no mesh at all);
    the dataset's placement is decided once it is loaded (`Layout.fit_data`).
    Refuses, in one line, a device count that is not there or that does not divide the work."""
    devices = select_devices(cfg.devices)
    if len(devices) == 1:
        return None
    n = len(devices)
    axis = cfg.device_axis
    if axis == "auto":
        axis = "seeds" if num_seeds > 1 and num_seeds % n == 0 else "batch"
    if axis == "seeds" and num_seeds % n:
        raise ValueError(
            f"--device-axis seeds needs the seed count ({num_seeds}) to be a multiple of --devices ({n}); "
            "use --device-axis batch, or change --seeds"
        )
    if axis == "seeds" and cfg.shard_params:
        raise ValueError("--shard-params splits parameters along the batch's device axis: use --device-axis batch")
    if axis == "batch" and batch_size % n:
        raise ValueError(
            f"--batch-size {batch_size} is not divisible by --devices {n}: each device takes an equal share of "
            f"the global batch (try --batch-size {batch_size // n * n or n})"
        )
    mesh = Mesh(np.asarray(devices), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    return Layout(mesh, axis, cfg.shard_params, cfg.data_placement == "sharded", num_seeds)


def select_devices(requested: int | str) -> list:
    """The first `requested` devices (all of them for 'all'), refusing more than there are."""
    devices = jax.devices()
    if requested == "all":
        return devices
    if requested > len(devices):
        where = f" over {jax.process_count()} processes" if jax.process_count() > 1 else ""
        raise ValueError(
            f"--devices {requested}: only {len(devices)} {devices[0].platform} device(s) are present{where}; "
            f"pass --devices {len(devices)} or --devices all"
        )
    if jax.process_count() > 1 and requested != len(devices):
        raise ValueError(
            f"--devices {requested}: a run over {jax.process_count()} processes uses every device of every "
            f"host ({len(devices)}); pass --devices all"
        )
    return devices[:requested]


def _shard_data(placement: str, devices: list, data_bytes: int) -> bool:
    if placement != "auto":
        return placement == "sharded"
    local = next(d for d in devices if d.process_index == jax.process_index())  # others' stats are not ours to read
    stats = local.memory_stats()
    limit = (stats or {}).get("bytes_limit")
    return bool(limit) and data_bytes > REPLICATED_DATA_SHARE * limit
