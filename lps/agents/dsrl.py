"""DSRL-NA - diffusion steering by RL with noise aliasing (Wagenmaker et al. 2025), offline; see
docs/agents.md.

A flow-matching base policy (10 Euler steps, sphere noise); a latent critic distilled from the
action critic, `L_W = || Q_W(s, w) - stopgrad(mean_j Q_j(s, pi_beta(s, w))) ||^2`, and a
deterministic latent actor on the sphere trained by `-Q_W(s, l(s)) / |Q_W|`. `alpha` (BC weight)
changes nothing. Departures from the public code (2x256 latent actor, `--release-actor` for
4x512; stop-gradient target so L_W trains Q_W only) are listed on the docs page.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lps.agents.base import Spec, batch_size, init_module, net_obs
from lps.nets import critic as C
from lps.nets.generative import BaseNetConfig, GenerativePolicy
from lps.nets.latent import Geometry, actor_latent
from lps.nets.mlp import ConcatMLP, Ensemble


@dataclasses.dataclass(frozen=True)
class DSRLConfig(C.CriticConfig, BaseNetConfig):
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Base policy MLP widths."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Latent actor MLP widths: 2x256 as the paper states (the public code builds 4x512: --release-actor)."""
    release_actor: bool = False
    """Set --actor-hidden to 4x512, as the public release builds DSRL-NA's latent actor (the paper's DSRL curves)."""
    latent_critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Latent critic Q_W MLP widths (GELU + LayerNorm)."""
    alpha: float = 1.0
    """Weight of the base policy's BC loss. A no-op under Adam: no other loss trains the base policy."""
    flow_steps: int = 10
    geometry: Geometry = "sphere"
    """Latent geometry of the base policy's noise and the latent actor."""


@dataclasses.dataclass(frozen=True)
class DSRL:
    cfg: DSRLConfig
    spec: Spec

    name: ClassVar[str] = "dsrl-na"
    summary: ClassVar[str] = "DSRL with noise aliasing: latent actor against a latent critic distilled from Q"
    target_keys: ClassVar[tuple[str, ...]] = ("critic",)
    key_fields: ClassVar[tuple[str, ...]] = (
        "critic_agg", "alpha", "flow_steps", "geometry", "actor_hidden", "latent_critic_hidden",
    )  # fmt: skip
    alpha_is_no_op: ClassVar[bool] = True
    notes: ClassVar[tuple[str, ...]] = (
        "alpha is a no-op without --grad-clip (it scales the BC loss alone, and Adam ignores a constant loss "
        "scale; a global-norm clip does not)",
        "latent actor 2x256 as the paper states; the public code builds 4x512 (--release-actor), whence the paper's DSRL curves",
        "the latent critic's target is a stop-gradient: its loss trains Q_W only (in the public code it "
        "also trains the action critic)",
        "critic_agg mean, as in the public release",
    )

    @classmethod
    def release_actor_hidden(cls, cfg) -> tuple[int, ...]:
        return (512, 512, 512, 512)

    @classmethod
    def default_critic_agg(cls, cfg) -> C.Aggregate:
        return "mean"

    @property
    def base(self) -> GenerativePolicy:
        return GenerativePolicy(
            self.cfg.base_hidden, self.spec.chunk_dim, "flow", self.cfg.flow_steps, self.cfg.geometry,
            dit=self.cfg.dit_spec(self.spec),
        )

    @property
    def latent_critic(self) -> Ensemble:
        return Ensemble(self.cfg.latent_critic_hidden, 1, self.cfg.num_critics, layer_norm=True)

    @property
    def latent_actor(self) -> ConcatMLP:
        return ConcatMLP(self.cfg.actor_hidden, self.spec.chunk_dim)

    def init(self, key):
        k_critic, k_base, k_latent_critic, k_actor = jax.random.split(key, 4)
        obs, chunk = jnp.zeros((1, self.spec.obs_dim)), jnp.zeros((1, self.spec.chunk_dim))
        return {
            "critic": init_module(self.cfg.critic, k_critic, obs, chunk),
            "base": self.base.init(k_base, self.spec.obs_dim),
            "latent_critic": init_module(self.latent_critic, k_latent_critic, obs, chunk),
            "latent_actor": init_module(self.latent_actor, k_actor, obs),
        }

    def latent(self, actor_params, obs):
        features = net_obs(obs, "latent_actor")
        return actor_latent(self.latent_actor.apply({"params": actor_params}, features), self.cfg.geometry)

    def bc_loss(self, params, obs, chunk, key):
        """The base policy's flow-matching loss."""
        return self.base.loss(params["base"], net_obs(obs, "base"), chunk, key)

    def act(self, params, obs, key):
        del key  # deterministic
        return self.base.sample(params["base"], net_obs(obs, "base"), self.latent(params["latent_actor"], obs))

    def loss(self, params, target_params, batch, key):
        k_next, k_bc, k_w = jax.random.split(key, 3)
        obs = batch["observations"]
        next_chunk = self.act(params, batch["next_observations"], k_next)
        critic_loss, critic_info = C.td_loss(self.cfg, params, target_params, batch, next_chunk, self.spec)
        bc_loss = self.bc_loss(params, obs, batch["actions"], k_bc)

        # Latent critic: regress the action critic pulled back through the base policy (a target,
        # so no gradient reaches the action critic or the base policy).
        w = self.base.noise(k_w, batch_size(obs))
        base_chunk = self.base.sample(params["base"], net_obs(obs, "base", frozen=True), w)
        pulled_back = C.q_values(self.cfg.critic, params["critic"], net_obs(obs, "critic", frozen=True), base_chunk)
        target = jax.lax.stop_gradient(jnp.mean(pulled_back, axis=0))
        q_w = C.q_values(self.latent_critic, params["latent_critic"], net_obs(obs, "latent_critic"), w)
        latent_critic_loss = C.critic_loss(q_w, target)

        # Latent actor against the frozen latent critic.
        z = self.latent(params["latent_actor"], obs)
        frozen_latent_critic = jax.lax.stop_gradient(params["latent_critic"])
        q_z = C.q_values(self.latent_critic, frozen_latent_critic, net_obs(obs, "latent_critic", frozen=True), z)
        actor_loss = C.normalised_q_loss(q_z)

        loss = critic_loss + self.cfg.alpha * bc_loss + latent_critic_loss + actor_loss
        return loss, {
            "loss/critic": critic_loss,
            "loss/bc": bc_loss,
            "loss/latent_critic": latent_critic_loss,
            "loss/actor": actor_loss,
            "q/latent": jnp.mean(q_z),
            **critic_info,
        }
