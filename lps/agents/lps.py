"""LPS - Latent Policy Steering (Im, Kolobov, Fu, Lee, RSS 2026); see docs/method.md and
docs/agents.md.

A one-step MeanFlow base policy `pi_beta(s, z)` maps a latent `z` on the sphere to an action
chunk; a latent actor `l(s)` is trained through the frozen base policy by the critic's gradient:

    L = L_critic(Q) + alpha * L_MeanFlow(pi_beta) - Q(s, pi_beta(s, l(s))) / |Q|

Acting is one call, `clip(pi_beta(s, l(s)), -1, 1)`; `alpha` has no effect under Adam (unless
`--grad-clip`). Ablations: `geometry`, `backbone`, `parameterisation`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp

from lps.agents.base import Spec, init_module, net_obs
from lps.nets import critic as C
from lps.nets import flows
from lps.nets.generative import BaseNetConfig, GenerativePolicy
from lps.nets.latent import Geometry, actor_latent
from lps.nets.mlp import ConcatMLP

Backbone = Literal["meanflow", "fm-10step", "fm-1step"]


@dataclasses.dataclass(frozen=True)
class LPSConfig(C.CriticConfig, BaseNetConfig):
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Base policy MLP widths (GELU, no LayerNorm)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Latent actor MLP widths."""
    release_actor: bool = False
    """Set --actor-hidden as the public release builds it: 4x512 for the flow-matching ablations
    (fm-10step, fm-1step: the paper's FM-LPS / FM-1step curves), 2x256 for LPS proper (2x512 with
    the release's DiT, as its robot script)."""
    alpha: float = 1.0
    """Weight of the base policy's BC loss. A no-op under plain Adam: no other loss trains the base
    policy, and Adam's step is unchanged by a constant loss scale. Not under --grad-clip (the robot
    preset's): the clip is on the norm of all gradients together, so alpha changes the BC share of it."""
    geometry: Geometry = "sphere"
    """Latent geometry of the training noise and the latent actor."""
    backbone: Backbone = "meanflow"
    """Base policy: one-step MeanFlow, or flow matching integrated with 10 or 1 Euler steps."""
    parameterisation: flows.Parameterisation = "action"
    """MeanFlow output: the clean chunk (noise-to-action) or the average velocity."""


@dataclasses.dataclass(frozen=True)
class LPS:
    cfg: LPSConfig
    spec: Spec

    name: ClassVar[str] = "lps"
    summary: ClassVar[str] = "Latent Policy Steering: latent actor steered through a one-step MeanFlow policy"
    target_keys: ClassVar[tuple[str, ...]] = ("critic",)
    key_fields: ClassVar[tuple[str, ...]] = (
        "geometry", "backbone", "parameterisation", "critic_agg", "alpha", "base_hidden",
    )  # fmt: skip
    alpha_is_no_op: ClassVar[bool] = True  # lps report draws it as one untuned line in the alpha figure
    notes: ClassVar[tuple[str, ...]] = (
        "alpha is a no-op without --grad-clip: it scales the BC loss, whose parameters no other loss "
        "touches, and Adam's update does not change when a loss is multiplied by a constant; runs with any "
        "alpha > 0 match. Under --grad-clip (the robot preset) it is not: the global-norm clip sees alpha",
        "critic_agg: min with the MeanFlow backbone (the public release); mean for the flow-matching "
        "ablations (fm-10step, fm-1step), as there",
        "latent actor 2x256; the public code builds the flow-matching ablations' at 4x512 (--release-actor)",
        "parameterisation velocity differentiates u along the exact path tangent (v, 1, 0) on (z, t, r); "
        "velocity-release uses the public code's (v, 0, 1), which drops the t-derivative",
    )

    @classmethod
    def default_critic_agg(cls, cfg) -> C.Aggregate:
        return "min" if cfg.backbone == "meanflow" else "mean"

    @classmethod
    def release_actor_hidden(cls, cfg) -> tuple[int, ...]:
        if cfg.backbone != "meanflow":
            return (512, 512, 512, 512)
        # The release's DROID script (the one that builds its MeanFlow DiT) widens LPS's latent actor.
        return (512, 512) if cfg.base_arch == "mfdit" else (256, 256)

    @property
    def base(self) -> GenerativePolicy:
        kind, steps = {"meanflow": ("meanflow", 1), "fm-10step": ("flow", 10), "fm-1step": ("flow", 1)}[
            self.cfg.backbone
        ]
        return GenerativePolicy(
            self.cfg.base_hidden, self.spec.chunk_dim, kind, steps, self.cfg.geometry, self.cfg.parameterisation,
            dit=self.cfg.dit_spec(self.spec),
        )

    @property
    def latent_actor(self) -> ConcatMLP:
        return ConcatMLP(self.cfg.actor_hidden, self.spec.chunk_dim)

    def init(self, key):
        k_critic, k_base, k_actor = jax.random.split(key, 3)
        obs = jnp.zeros((1, self.spec.obs_dim))
        return {
            "critic": init_module(self.cfg.critic, k_critic, obs, jnp.zeros((1, self.spec.chunk_dim))),
            "base": self.base.init(k_base, self.spec.obs_dim),
            "latent_actor": init_module(self.latent_actor, k_actor, obs),
        }

    def latent(self, params, obs, key):
        """The latent the actor picks for `obs` (deterministic: `key` is unused)."""
        del key
        features = net_obs(obs, "latent_actor")
        return actor_latent(self.latent_actor.apply({"params": params["latent_actor"]}, features), self.cfg.geometry)

    def act(self, params, obs, key):
        return self.base.sample(params["base"], net_obs(obs, "base"), self.latent(params, obs, key))

    def loss(self, params, target_params, batch, key):
        k_next, k_bc, k_actor = jax.random.split(key, 3)
        next_chunk = self.act(params, batch["next_observations"], k_next)
        critic_loss, critic_info = C.td_loss(self.cfg, params, target_params, batch, next_chunk, self.spec)
        bc_loss = self.bc_loss(params, batch["observations"], batch["actions"], k_bc, batch.get("bc_weights"))
        actor_loss, actor_info = self.actor_loss(params, batch["observations"], k_actor)
        loss = critic_loss + self.bc_weight * bc_loss + actor_loss
        return loss, {
            "loss/critic": critic_loss,
            "loss/bc": bc_loss,
            "loss/actor": actor_loss,
            **critic_info,
            **actor_info,
        }

    def bc_loss(self, params, obs, chunk, key, weights=None):
        """The base policy's behaviour-cloning loss (MeanFlow, or flow matching for the ablations),
        on the chunks `weights` marks (all without)."""
        return self.base.loss(params["base"], net_obs(obs, "base"), chunk, key, weights)

    @property
    def bc_weight(self) -> float:
        return self.cfg.alpha

    def actor_loss(self, params, obs, key):
        """-Q / |Q| of the steered chunk; the gradient flows through the frozen base policy into l only."""
        frozen = jax.lax.stop_gradient({"base": params["base"], "critic": params["critic"]})
        # The frozen networks' encoders are frozen with them (no-op on state vectors).
        steered = self.base.sample(frozen["base"], net_obs(obs, "base", frozen=True), self.latent(params, obs, key))
        q = C.q_values(self.cfg.critic, frozen["critic"], net_obs(obs, "critic", frozen=True), steered)
        return C.normalised_q_loss(q), {"q/policy": jnp.mean(q)}
