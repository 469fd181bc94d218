"""QC-FQL — flow Q-learning (Park, Li, Levine 2025) with action chunking (Li, Zhou, Levine 2025).

A flow-matching BC policy (Gaussian noise, 10 Euler steps) is the teacher; a one-step policy
`mu(s, e)` is trained to maximise Q while staying close to the teacher's sample from the same
noise:

    L_mu = -Q(s, mu(s, e)) / |Q| + alpha * || mu(s, e) - flow(s, e) ||^2

`alpha` must be tuned per environment; the defaults (docs/agents.md) are those of the LPS
comparison with the normalised Q loss: cube-single 30, cube-double 3, scene 1, puzzle-3x3 3, puzzle-4x4 10.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lps.agents.base import Spec, batch_size, init_module, net_obs
from lps.nets import critic as C
from lps.nets.generative import BaseNetConfig, GenerativePolicy, Kind
from lps.nets.latent import Geometry
from lps.nets.mlp import ConcatMLP

ALPHA_BY_ENV = {"cube-single": 30.0, "cube-double": 3.0, "scene": 1.0, "puzzle-3x3": 3.0, "puzzle-4x4": 10.0}
ALPHA_FALLBACK = 10.0


def alpha_for(env: str) -> float:
    """The paper's per-environment alpha for a task name (ALPHA_FALLBACK for other data)."""
    return next((a for name, a in ALPHA_BY_ENV.items() if env.startswith(name + "-")), ALPHA_FALLBACK)


@dataclasses.dataclass(frozen=True)
class QCFQLConfig(C.CriticConfig, BaseNetConfig):
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """BC (teacher) policy MLP widths."""
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """One-step policy MLP widths."""
    alpha: float | None = None
    """Distillation weight; None: the paper's value for the task's environment."""
    flow_steps: int = 10
    """Euler steps of the teacher."""
    geometry: Geometry = "normal"
    """Noise distribution of the teacher and the one-step policy."""
    clip_critic_input: bool = True
    """Clip the one-step policy's chunk to [-1, 1] before the critic scores it in the actor loss
    (QC-FQL and Q-chunking do; the public release's QC-MFQL does not)."""


@dataclasses.dataclass(frozen=True)
class QCFQL:
    cfg: QCFQLConfig
    spec: Spec

    name: ClassVar[str] = "qc-fql"
    summary: ClassVar[str] = "Q-chunked flow Q-learning: one-step policy distilled from a flow BC policy"
    target_keys: ClassVar[tuple[str, ...]] = ("critic",)
    key_fields: ClassVar[tuple[str, ...]] = ("alpha", "critic_agg", "flow_steps", "geometry", "actor_hidden")
    notes: ClassVar[tuple[str, ...]] = (
        "alpha per environment, as in the LPS comparison (normalised Q loss); critic_agg mean, as in the "
        "published QC-FQL whose per-environment alphas these are",
    )
    teacher_kind: ClassVar[Kind] = "flow"

    @classmethod
    def default_critic_agg(cls, cfg) -> C.Aggregate:
        return "mean"

    def __post_init__(self):
        if self.cfg.alpha is None:
            raise ValueError(f"{self.name}: alpha is unset; lps.agents.resolve_config fills the per-env default")

    @classmethod
    def resolve(cls, cfg, env: str):
        return cfg if cfg.alpha is not None else dataclasses.replace(cfg, alpha=alpha_for(env))

    @property
    def teacher(self) -> GenerativePolicy:
        return GenerativePolicy(
            self.cfg.base_hidden,
            self.spec.chunk_dim,
            self.teacher_kind,
            self.cfg.flow_steps,
            self.cfg.geometry,
            getattr(self.cfg, "parameterisation", "action"),
            dit=self.cfg.dit_spec(self.spec),
        )

    @property
    def one_step(self) -> ConcatMLP:
        return ConcatMLP(self.cfg.actor_hidden, self.spec.chunk_dim)

    def init(self, key):
        k_critic, k_base, k_actor = jax.random.split(key, 3)
        obs, chunk = jnp.zeros((1, self.spec.obs_dim)), jnp.zeros((1, self.spec.chunk_dim))
        return {
            "critic": init_module(self.cfg.critic, k_critic, obs, chunk),
            "base": self.teacher.init(k_base, self.spec.obs_dim),
            "actor": init_module(self.one_step, k_actor, obs, chunk),
        }

    def raw_one_step_chunk(self, actor_params, obs, noise):
        """The one-step policy's unclipped output: what is distilled (a clipped output would get
        no gradient from the distillation once it leaves [-1, 1], so nothing would pull it back)."""
        return self.one_step.apply({"params": actor_params}, net_obs(obs, "actor"), noise)

    def act(self, params, obs, key):
        noise = self.teacher.noise(key, batch_size(obs))
        return jnp.clip(self.raw_one_step_chunk(params["actor"], obs, noise), -1.0, 1.0)

    def bc_loss(self, params, obs, chunk, key):
        """The teacher's behaviour-cloning loss (flow matching or MeanFlow)."""
        return self.teacher.loss(params["base"], net_obs(obs, "base"), chunk, key)

    def loss(self, params, target_params, batch, key):
        k_next, k_bc, k_noise = jax.random.split(key, 3)
        obs = batch["observations"]
        next_chunk = self.act(params, batch["next_observations"], k_next)
        critic_loss, critic_info = C.td_loss(self.cfg, params, target_params, batch, next_chunk, self.spec)
        bc_loss = self.bc_loss(params, obs, batch["actions"], k_bc)

        noise = self.teacher.noise(k_noise, batch_size(obs))
        teacher_obs = net_obs(obs, "base", frozen=True)
        target = jax.lax.stop_gradient(self.teacher.sample(params["base"], teacher_obs, noise))
        raw_chunk = self.raw_one_step_chunk(params["actor"], obs, noise)
        distill_loss = jnp.mean(jnp.square(raw_chunk - target))  # FQL's scale: mean over elements
        # The critic is queried where the policy acts, inside the action box (unless configured
        # as the release's QC-MFQL, which scores the raw output).
        chunk = jnp.clip(raw_chunk, -1.0, 1.0) if self.cfg.clip_critic_input else raw_chunk
        q = C.q_values(self.cfg.critic, jax.lax.stop_gradient(params["critic"]), net_obs(obs, "critic", frozen=True), chunk)
        q_loss = C.normalised_q_loss(q)

        loss = critic_loss + bc_loss + self.cfg.alpha * distill_loss + q_loss
        return loss, {
            "loss/critic": critic_loss,
            "loss/bc": bc_loss,
            "loss/distill": distill_loss,
            "loss/actor": q_loss,
            "q/policy": jnp.mean(q),
            **critic_info,
        }
