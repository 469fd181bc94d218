"""The train state and the update: a pure, jitted step scanned over many steps per dispatch; see
docs/training.md.

    state, metrics = update(state, data)

`state` holds the parameters, Polyak target, optimiser state, step and RNG key; each step's key is
`fold_in(state.rng, state.step)`, so the numbers depend only on the seed and the step count, not on
how steps are grouped into dispatches (resume is exact). Batches are sampled inside the update
from the on-device dataset or replay buffer. The offline loop (`lps.training.loop`) and the online
phase (`lps.training.online`) build their updates here.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lps.data.sampler import ChunkData, sample_chunks
from lps.nets.critic import polyak
from lps.training import checkpoint
from lps.training.config import TrainConfig


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainState(struct.PyTreeNode):
    step: jax.Array
    rng: jax.Array
    params: Any
    target_params: Any
    opt_state: Any


def make_optimizer(cfg: TrainConfig, online_lr: float | None = None) -> optax.GradientTransformation:
    """Adam (after a global-norm clip with --grad-clip) at --lr or under the cosine schedule.
    `online_lr`: the rate of every update past --steps (the online phase, restarted at a constant
    rate); the optimiser state keeps its structure, so offline checkpoints restore into it."""
    lr = cfg.lr if online_lr is None else online_lr
    if cfg.lr_schedule == "cosine":  # the paper's real-robot schedule: 1 % warmup, cosine down to lr / 10
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.steps // 100, cfg.steps, cfg.lr / 10)
        if online_lr is not None:
            lr = optax.join_schedules([lr, optax.constant_schedule(online_lr)], [cfg.steps])
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr))
    return optax.adam(lr)


def create_state(agent, optimizer, seed: int) -> TrainState:
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    # Jitted: initialising conv/attention layers op by op costs tens of seconds on a CPU.
    params = jax.jit(agent.init)(init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params=params,
        # A copy, not an alias: the state's buffers are donated to the update.
        target_params=jax.tree_util.tree_map(jnp.copy, {k: params[k] for k in agent.target_keys}),
        opt_state=optimizer.init(params),
    )


def make_update(agent, optimizer, batch_size: int, sample=sample_chunks):
    """The pure update `(state, data) -> (state, metrics)`: sample, one gradient step, Polyak.
    `sample(data, key, batch_size, chunk_len, gamma)` draws the batch (the online phase passes
    its replay buffer's sampler, `lps.data.replay.make_sampler`)."""
    spec, tau = agent.spec, getattr(agent.cfg, "tau", 0.0)

    def update(state: TrainState, data: ChunkData):
        batch_key, loss_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        batch = sample(data, batch_key, batch_size, spec.chunk_len, spec.gamma)
        grads, metrics = jax.grad(agent.loss, has_aux=True)(state.params, state.target_params, batch, loss_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        target = polyak(state.target_params, {k: params[k] for k in agent.target_keys}, tau)
        return state.replace(step=state.step + 1, params=params, target_params=target, opt_state=opt_state), metrics

    return update


def stack_seeds(states: list[TrainState]) -> TrainState:
    """Seeds as a leading axis of one state (a single seed stays as it is)."""
    return states[0] if len(states) == 1 else jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def make_seeds_update(agent, optimizer, batch_size: int, num_seeds: int, batch_sharding=None):
    """The update for `num_seeds` stacked states: one compiled program and one dataset for all
    seeds. A single seed is not vmapped: on a CPU a batch-of-one vmap costs ~25 % in matmuls.
    `batch_sharding` (a `jax.sharding.Sharding` splitting the first axis) splits each sampled
    batch over devices (data parallelism, `lps.training.distributed`); the values are the same."""
    sample = sample_chunks if batch_sharding is None else split_batches(sample_chunks, batch_sharding)
    update = make_update(agent, optimizer, batch_size, sample)
    return update if num_seeds == 1 else jax.vmap(update, in_axes=(0, None))


def split_batches(sample, sharding):
    """`sample` whose batch is laid out by `sharding`: the compiler then computes each device's share
    of the batch on that device and sums the gradients across devices."""

    def sample_split(*args):
        return jax.lax.with_sharding_constraint(sample(*args), sharding)

    return sample_split


def make_multi_update(update, num_steps: int, scan: bool = True, shardings=None):
    """`num_steps` updates in one compiled program; returns per-step metrics stacked.

    `scan=False` dispatches the same jitted update `num_steps` times instead (data and state stay
    on the device; only the dispatch loop is on the host): XLA's CPU backend runs convolutions
    inside a loop body ~20x slower than at top level (measured: 14 s vs 0.7 s per update of the
    IMPALA encoder at 128x128x6), so image agents on a CPU use it (`lps.agents.encoded.scan_updates`).

    `shardings`, `(in_shardings, out_shardings)` of `(state, data) -> (state, metrics)`, compiles it
    for a device mesh (`lps.training.distributed.Layout.update_shardings`); None: one device."""
    jit = partial(jax.jit, donate_argnums=0)
    if shardings is not None:
        jit = partial(jit, in_shardings=shardings[0], out_shardings=shardings[1])
    if not scan:
        step = jit(update)

        def loop_update(state, data):
            rows = []
            for _ in range(num_steps):
                state, metrics = step(state, data)
                rows.append(metrics)
            return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *rows)

        return loop_update

    @jit
    def multi_update(state, data):
        return jax.lax.scan(lambda s, _: update(s, data), state, None, length=num_steps)

    return multi_update


def check_finite(metrics: dict, first_step: int, run_dir: Path) -> None:
    """Raise at the earliest step where any metric is NaN/inf, naming every metric bad there."""
    bad = {name: ~np.isfinite(np.asarray(values)) for name, values in metrics.items()}
    bad_steps = [int(np.argmax(b)) for b in bad.values() if b.any()]
    if not bad_steps:
        return
    index = min(bad_steps)
    names = ", ".join(f"'{n}' = {metrics[n][index]}" for n, b in bad.items() if b[index])
    kept = (
        f"the last good checkpoint is kept in {run_dir / checkpoint.CHECKPOINT}"
        if (run_dir / checkpoint.CHECKPOINT).exists()
        else "no checkpoint had been written yet"
    )
    raise TrainingDiverged(
        f"training diverged at step {first_step + index + 1}: {names}; training stopped and {kept}. "
        "Try a lower --lr, or check the data's rewards"
    )


@lru_cache(maxsize=32)
def jitted_act(agent):
    """One compiled acting function per agent (agents are hashable), reused across evaluations."""
    return jax.jit(agent.act)
