"""CFGRL — classifier-free guidance for RL (Frans, Park, Abbeel, Levine 2025), chunked.

An IQL-style value `V` (expectile 0.9 of the critic) and a critic trained to
`R + gamma^H m V(s')` label each dataset chunk optimal when its advantage is positive,
`o = 1[min_j Q_j(s, a) - V(s) > 0]`. A flow policy is trained on `(s, o)`, with the label
dropped 10 % of the time so that it also learns the unconditional policy; acting follows the
guided velocity `v_u + w (v_o=1 - v_u)` (w = 1.5) for 10 Euler steps.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lps import critic as C
from lps.agents.base import Spec, init_module
from lps.generative import BaseNetConfig, GenerativePolicy
from lps.latent import Geometry
from lps.nets import MLP

# The label the policy is conditioned on, appended to the observation.
OPTIMAL, NOT_OPTIMAL, UNCONDITIONAL = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), jnp.array([0.0, 0.0])


@dataclasses.dataclass(frozen=True)
class CFGRLConfig(C.CriticConfig, BaseNetConfig):
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Flow policy MLP widths."""
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Value V MLP widths (GELU + LayerNorm)."""
    expectile: float = 0.9
    guidance: float = 1.5
    """Guidance weight w."""
    uncond_prob: float = 0.1
    """Fraction of rows trained without a label."""
    flow_steps: int = 10
    geometry: Geometry = "normal"


def expectile_loss(diff: jnp.ndarray, expectile: float) -> jnp.ndarray:
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return jnp.mean(weight * jnp.square(diff))


@dataclasses.dataclass(frozen=True)
class CFGRL:
    cfg: CFGRLConfig
    spec: Spec

    name: ClassVar[str] = "cfgrl"
    summary: ClassVar[str] = "Classifier-free guidance RL: flow policy guided towards positive-advantage chunks"
    target_keys: ClassVar[tuple[str, ...]] = ("critic",)
    key_fields: ClassVar[tuple[str, ...]] = ("guidance", "expectile", "uncond_prob", "flow_steps")

    @property
    def policy(self) -> GenerativePolicy:
        return GenerativePolicy(
            self.cfg.base_hidden, self.spec.chunk_dim, "flow", self.cfg.flow_steps, self.cfg.geometry,
            dit=self.cfg.dit_spec(self.spec),
        )

    @property
    def value(self) -> MLP:
        return MLP(self.cfg.value_hidden, 1, layer_norm=True)

    def init(self, key):
        k_critic, k_value, k_base = jax.random.split(key, 3)
        obs, chunk = jnp.zeros((1, self.spec.obs_dim)), jnp.zeros((1, self.spec.chunk_dim))
        return {
            "critic": init_module(self.cfg.critic, k_critic, obs, chunk),
            "value": init_module(self.value, k_value, obs),
            "base": self.policy.init(k_base, self.spec.obs_dim + 2),
        }

    def v(self, value_params, obs):
        return self.value.apply({"params": value_params}, obs)[..., 0]

    def optimality_labels(self, params, obs, chunk):
        q = C.aggregate(C.q_values(self.cfg.critic, params["critic"], obs, chunk), "min")
        return jax.lax.stop_gradient((q - self.v(params["value"], obs) > 0).astype(jnp.float32))

    def act(self, params, obs, key):
        def condition(label):
            return self.policy.bind(params["base"], jnp.concatenate([obs, jnp.broadcast_to(label, (len(obs), 2))], -1))

        cond, uncond, w = condition(OPTIMAL), condition(UNCONDITIONAL), self.cfg.guidance

        def guided(z, t, h):
            v_u = uncond(z, t, h)
            return v_u + w * (cond(z, t, h) - v_u)

        return jnp.clip(self.policy.raw_sample(guided, self.policy.noise(key, obs.shape[0])), -1.0, 1.0)

    def loss(self, params, target_params, batch, key):
        k_drop, k_bc = jax.random.split(key)
        obs, chunk = batch["observations"], batch["actions"]

        # IQL: V is an upper expectile of the target critic; Q bootstraps from V.
        target_q = C.aggregate(C.q_values(self.cfg.critic, target_params["critic"], obs, chunk), "min")
        value_loss = expectile_loss(jax.lax.stop_gradient(target_q) - self.v(params["value"], obs), self.cfg.expectile)
        next_v = self.v(params["value"], batch["next_observations"])
        td_target = C.chunk_target(batch, next_v, self.spec.gamma, self.spec.chunk_len)
        q = C.q_values(self.cfg.critic, params["critic"], obs, chunk)
        critic_loss = C.critic_loss(q, td_target)

        # Label-conditioned flow BC with label dropout.
        labels = self.optimality_labels(params, obs, chunk)
        cond = jnp.where(labels[:, None] > 0, OPTIMAL, NOT_OPTIMAL)
        dropped = jax.random.uniform(k_drop, (obs.shape[0], 1)) < self.cfg.uncond_prob
        cond = jnp.where(dropped, UNCONDITIONAL, cond)
        bc_loss = self.policy.loss(params["base"], jnp.concatenate([obs, cond], -1), chunk, k_bc)

        loss = critic_loss + value_loss + bc_loss
        return loss, {
            "loss/critic": critic_loss,
            "loss/value": value_loss,
            "loss/bc": bc_loss,
            "optimal_fraction": jnp.mean(labels),
            "q/data": jnp.mean(q),
            "q/target": jnp.mean(td_target),
        }
