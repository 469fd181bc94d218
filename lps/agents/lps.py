"""LPS — Latent Policy Steering (Im, Kolobov, Fu, Lee, RSS 2026).

A one-step MeanFlow base policy `pi_beta(s, z)` is trained by behaviour cloning to map a latent
`z` on the sphere to an action chunk. A small latent actor `l(s)` picks the latent; it is trained
by backpropagating the action-space critic's gradient straight through the (frozen) base policy:

    L = L_critic(Q) + alpha * L_MeanFlow(pi_beta) - Q(s, pi_beta(s, l(s))) / |Q|

No behaviour-regularisation weight to tune (alpha = 1 only scales the BC loss), no latent critic:
the base policy's image of the latent sphere is the support constraint. Acting is one base-policy
call: `pi(s) = clip(pi_beta(s, l(s)), -1, 1)`.

Ablations (paper §5): `geometry` (sphere | normal | truncated) and `backbone`
(meanflow | fm-10step | fm-1step: backpropagate through Euler steps of a flow-matching policy)
and `parameterisation` (action | velocity).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp

from lps import critic as C
from lps import flows
from lps.agents.base import Spec, init_module
from lps.latent import Geometry, actor_latent, sample_latent
from lps.nets import ConcatMLP

Backbone = Literal["meanflow", "fm-10step", "fm-1step"]


@dataclasses.dataclass(frozen=True)
class LPSConfig:
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Base policy MLP widths (GELU, no LayerNorm)."""
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Critic MLP widths (GELU + LayerNorm)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Latent actor MLP widths."""
    num_critics: int = 2
    critic_agg: C.Aggregate = "min"
    """How the target critics are combined in the bootstrap."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    alpha: float = 1.0
    """Weight of the base policy's BC loss (1 in the paper; only swept in its sensitivity study)."""
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
    key_fields: ClassVar[tuple[str, ...]] = ("geometry", "backbone", "parameterisation", "alpha", "base_hidden")

    # --- networks -------------------------------------------------------------------------
    @property
    def critic(self):
        return C.chunk_critic(self.cfg.critic_hidden, self.cfg.num_critics)

    @property
    def base_policy(self):
        return ConcatMLP(self.cfg.base_hidden, self.spec.chunk_dim)

    @property
    def latent_actor(self):
        return ConcatMLP(self.cfg.actor_hidden, self.spec.chunk_dim)

    def init(self, key):
        k_critic, k_base, k_actor = jax.random.split(key, 3)
        obs = jnp.zeros((1, self.spec.obs_dim))
        chunk = jnp.zeros((1, self.spec.chunk_dim))
        time = jnp.zeros((1, 1))
        return {
            "critic": init_module(self.critic, k_critic, obs, chunk),
            "base": init_module(self.base_policy, k_base, obs, chunk, time, time),
            "latent_actor": init_module(self.latent_actor, k_actor, obs),
        }

    # --- the policy -----------------------------------------------------------------------
    def base_net(self, base_params, obs):
        return lambda z, t, h: self.base_policy.apply({"params": base_params}, obs, z, t, h)

    def generate(self, base_params, obs, z):
        """Decode latent `z` into an action chunk with the base policy."""
        net = self.base_net(base_params, obs)
        if self.cfg.backbone == "meanflow":
            chunk = flows.meanflow_sample(net, z, self.cfg.parameterisation)
        else:
            chunk = flows.euler_sample(net, z, steps=10 if self.cfg.backbone == "fm-10step" else 1)
        return jnp.clip(chunk, -1.0, 1.0)

    def steer(self, params, obs):
        """The LPS policy: the latent actor's latent, decoded by the base policy."""
        raw = self.latent_actor.apply({"params": params["latent_actor"]}, obs)
        return self.generate(params["base"], obs, actor_latent(raw, self.cfg.geometry))

    def act(self, params, obs, key):
        del key  # deterministic
        return self.steer(params, obs)

    # --- losses ---------------------------------------------------------------------------
    def loss(self, params, target_params, batch, key):
        k_noise, k_time = jax.random.split(key)
        obs, chunk = batch["observations"], batch["actions"]

        # Critic: Q-chunking target with the current LPS policy at the chunk's end.
        next_obs = batch["next_observations"]
        next_q = C.aggregate(
            C.q_values(self.critic, target_params["critic"], next_obs, self.steer(params, next_obs)),
            self.cfg.critic_agg,
        )
        target = C.chunk_target(batch, next_q, self.spec.gamma, self.spec.chunk_len)
        q_data = C.q_values(self.critic, params["critic"], obs, chunk)
        critic_loss = C.critic_loss(q_data, target)

        # Base policy: behaviour cloning of dataset chunks from noise in the same geometry.
        noise = sample_latent(k_noise, chunk.shape, self.cfg.geometry)
        net = self.base_net(params["base"], obs)
        if self.cfg.backbone == "meanflow":
            bc_loss = flows.meanflow_loss(net, chunk, noise, k_time, self.cfg.parameterisation)
        else:
            bc_loss = flows.flow_matching_loss(net, chunk, noise, k_time)

        # Latent actor: the critic's gradient flows through the frozen base policy into l only.
        frozen = jax.lax.stop_gradient({"base": params["base"], "critic": params["critic"]})
        steered = self.steer({"base": frozen["base"], "latent_actor": params["latent_actor"]}, obs)
        q_pi = C.q_values(self.critic, frozen["critic"], obs, steered)
        actor_loss = C.normalised_q_loss(q_pi)

        loss = critic_loss + self.cfg.alpha * bc_loss + actor_loss
        return loss, {
            "loss/critic": critic_loss,
            "loss/bc": bc_loss,
            "loss/actor": actor_loss,
            "q/data": jnp.mean(q_data),
            "q/policy": jnp.mean(q_pi),
            "q/target": jnp.mean(target),
        }
