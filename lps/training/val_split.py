"""Overfitting signals from the validation split, logged at every evaluation: `val/bc_loss`,
`val/td_error`, `val/q_gap` and `val/clip_fraction`; see docs/outputs.md ("Validation split").

The split (OGBench's `<env>-play-v0-val.npz`, or `--val-dataset`) is relabelled like the training
data and put on the device once; a fixed, seeded set of up to `MAX_CHUNKS` of its chunks is scored
with the same noise every time. Runs without validation data train as before and say once that
the val/ metrics are off.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lps.agents.encoded import describe_observations, spec_fields
from lps.data import tasks
from lps.data.generate import dataset_paths
from lps.data.sampler import chunk_starts, gather_chunks, to_device
from lps.data.validate import load_own_dataset
from lps.nets.observations import net_obs
from lps.training.plan import RunPlan

MAX_CHUNKS = 4096
CLIP_LIMIT = 1.0 - 1e-6
VALIDATION_SEED = 0  # the same chunks and noise for every run, seed and agent


def load_validation_data(plan: RunPlan, val_dataset: str | None, chunk_len: int) -> tuple[dict | None, str]:
    """The validation split of the plan's task (or `--val-dataset`) as a validated row-layout
    dataset, or None and why."""
    if val_dataset is not None:
        return load_own_dataset(val_dataset, chunk_len), val_dataset
    if plan.dataset is not None:
        return None, f"--dataset {plan.dataset} comes with no --val-dataset"
    if plan.task is None:
        return None, f"toy task {plan.name} has no validation split"
    _, val_path = dataset_paths(plan.task.env, plan.data_dir)
    if not val_path.exists():
        return None, f"no {val_path.name} in {plan.data_dir}"
    return tasks.load_task_file(plan.task, val_path, chunk_len), str(val_path)


def fixed_chunks(dataset: dict[str, np.ndarray], chunk_len: int, gamma: float, max_chunks: int = MAX_CHUNKS,
                 frame_stack: int = 1) -> dict:  # fmt: skip
    """Up to `max_chunks` chunks of a row-layout dataset, chosen once with a fixed seed, on the device."""
    starts = chunk_starts(dataset["terminals"], chunk_len)
    if len(starts) == 0:
        raise ValueError(f"the validation data has no episode longer than the chunk length {chunk_len}")
    if len(starts) > max_chunks:
        starts = np.sort(np.random.default_rng(VALIDATION_SEED).choice(starts, max_chunks, replace=False))
    return gather_chunks(to_device(dataset, chunk_len, frame_stack), jnp.asarray(starts), chunk_len, gamma)


@partial(jax.jit, static_argnums=0)
def validation_metrics(agent, params, target_params, val_data: dict, key: jax.Array) -> dict:
    """The `val/` metrics of one seed's parameters on the fixed validation chunks (see module doc)."""
    loss_key, act_key = jax.random.split(key)
    _, train_metrics = agent.loss(params, target_params, val_data, loss_key)
    obs, data_chunk = val_data["observations"], val_data["actions"]
    chunk = agent.act(params, obs, act_key)
    out = {
        "val/bc_loss": train_metrics["loss/bc"],
        "val/clip_fraction": jnp.mean(jnp.abs(chunk) >= CLIP_LIMIT),
    }
    if "critic" in params:
        critic = agent.cfg.critic
        # Image agents (lps.agents.encoded): the critic scores its own encoder's features.
        encode = getattr(agent, "features_by_network", None)
        critic_obs = net_obs(encode(params, None, obs), "critic") if encode is not None else obs
        q_policy = critic.apply({"params": params["critic"]}, critic_obs, chunk)[..., 0].mean(0)
        q_data = critic.apply({"params": params["critic"]}, critic_obs, data_chunk)[..., 0].mean(0)
        out["val/td_error"] = train_metrics["loss/critic"]
        out["val/q_gap"] = jnp.mean(q_policy - q_data)
    return out


class ValSplit:
    """`validator(params, target_params) -> {val/...: float}` for one seed; inactive without data."""

    def __init__(self, plan: RunPlan, val_dataset: str | None, agent):
        dataset, source = load_validation_data(plan, val_dataset, agent.spec.chunk_len)
        self.agent, self.data = agent, None
        if dataset is None:
            print(f"[lps] no validation data ({source}): val/ metrics off")
            return
        # What the observations are (state dims, images): a pixel dataset's shape[1] is its height.
        actions = int(np.shape(dataset["actions"])[-1])
        found = dataclasses.replace(agent.spec, **{"image_shape": None, "cameras": (), **spec_fields(dataset["observations"])})
        if found != agent.spec or actions != agent.spec.action_dim:
            problem = (f"validation data {source} has observations {describe_observations(found)} and {actions}-D "
                       f"actions; the training data {describe_observations(agent.spec)} and {agent.spec.action_dim}-D")  # fmt: skip
            if val_dataset is not None:  # asked for by name: a mistake to stop on, not to note
                raise ValueError(f"{problem}: give a --val-dataset of the same task (or none)")
            print(f"[lps] {problem}: val/ metrics off")
            return
        self.data = fixed_chunks(dataset, agent.spec.chunk_len, agent.spec.gamma, frame_stack=agent.spec.frame_stack)
        self.key = jax.random.PRNGKey(VALIDATION_SEED)
        print(f"[lps] validation: {len(self.data['observations'])} chunks of {source} scored at every evaluation")

    @property
    def active(self) -> bool:
        return self.data is not None

    def __call__(self, params, target_params) -> dict[str, float]:
        if self.data is None:
            return {}
        metrics = validation_metrics(self.agent, params, target_params, self.data, self.key)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}
