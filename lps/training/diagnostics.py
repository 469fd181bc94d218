"""What online fine-tuning does to the networks, measured on the offline and the online data apart;
see docs/fine-tuning-on-a-robot.md ("What the diagnostics showed").

    diagnose = make_diagnose(agent, batch_size=256)
    row = diagnose(params, target_params, reference_params, buffer, key)   # {name: float}

A row holds the agent's losses evaluated (no update) on offline-only and online-only batches of
the replay buffer, plus `shift/offline`, `latent/spread` and `batch/online_share`. The learner
(`lps.deploy.learner`) writes one row per trained episode; nothing here changes state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lps.data import replay
from lps.data.sampler import gather_chunks

# The agent's metrics reported per source, under shorter names.
SOURCE_METRICS = {"loss/critic": "td", "loss/bc": "bc", "q/data": "q_data", "q/target": "q_target",
                  "q/policy": "q_policy"}  # fmt: skip


def make_diagnose(agent, batch_size: int, mix: replay.Mix = "balanced"):
    """A jitted `(params, target_params, reference_params, buffer, key) -> {name: scalar}` (see the
    module docstring). Online entries are NaN while the buffer holds no online chunk."""
    spec = agent.spec

    def on_source(params, target_params, buffer, key, online: bool):
        rows_key, loss_key = jax.random.split(key)
        rows = replay.sample_source_rows(buffer, rows_key, batch_size, online)
        batch = gather_chunks(buffer, rows, spec.chunk_len, spec.gamma)
        _, metrics = agent.loss(params, target_params, batch, loss_key)
        return batch, {short: metrics[name] for name, short in SOURCE_METRICS.items() if name in metrics}

    @jax.jit
    def diagnose(params, target_params, reference_params, buffer, key):
        k_off, k_on, k_act, k_mix = jax.random.split(key, 4)
        has_online = buffer.num_starts > buffer.num_offline_starts
        offline_batch, row = on_source(params, target_params, buffer, k_off, online=False)
        out = {f"offline/{k}": v for k, v in row.items()}
        _, row = on_source(params, target_params, buffer, k_on, online=True)
        out.update({f"online/{k}": jnp.where(has_online, v, jnp.nan) for k, v in row.items()})
        obs = offline_batch["observations"]
        chunk = agent.act(params, obs, k_act)
        out["shift/offline"] = jnp.mean(jnp.abs(chunk - agent.act(reference_params, obs, k_act)))
        if hasattr(agent, "latent"):
            out["latent/spread"] = jnp.mean(jnp.std(agent.latent(params, obs, k_act), axis=0))
        rows = replay.sample_rows(buffer, k_mix, batch_size, mix)
        out["batch/online_share"] = jnp.mean((rows >= buffer.num_offline_rows).astype(jnp.float32))
        return out

    return diagnose
