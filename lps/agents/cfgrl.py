"""CFGRL - classifier-free guidance for RL (Frans, Park, Abbeel, Levine 2025), chunked, trained as
the LPS release trains it; see docs/agents.md.

Two IQL values `V_k` (expectile 0.9 of the target critic), critic member k bootstrapping from
`V_k`; one flow policy conditioned on an optimality label, with loss
`mean_i(o_i * FM(s_i, g=1) + uncond_weight * FM(s_i, g=0))`, where
`o = mean_k 1[agg_j Qbar_j(s, a) > V_k(s)]` comes from the target critic. Acting follows the
guided velocity `v_u + w (v_1 - v_u)`, w = 1.5, for 10 Euler steps.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lps.agents.base import Spec, batch_size, init_module, net_obs
from lps.nets import critic as C
from lps.nets import flows
from lps.nets.generative import BaseNetConfig, GenerativePolicy
from lps.nets.latent import Geometry
from lps.nets.mlp import Ensemble

# The label the policy is conditioned on, appended to the observation. NumPy, not jnp: a jnp array
# made at import would start the XLA backend, before a multi-host run can join its hosts.
OPTIMAL, UNCONDITIONAL = np.ones((1,), np.float32), np.zeros((1,), np.float32)


@dataclasses.dataclass(frozen=True)
class CFGRLConfig(C.CriticConfig, BaseNetConfig):
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Flow policy MLP widths."""
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Value V MLP widths (GELU + LayerNorm); there are --num-critics value networks."""
    expectile: float = 0.9
    guidance: float = 1.5
    """Guidance weight w."""
    uncond_weight: float = 0.1
    """Weight of the unconditional pass, trained on every row."""
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
    key_fields: ClassVar[tuple[str, ...]] = ("guidance", "expectile", "uncond_weight", "critic_agg", "flow_steps")
    notes: ClassVar[tuple[str, ...]] = (
        "critic_agg combines the target critics in V's expectile target and in the optimality labels: min, "
        "as the public code hard-codes there (its config's critic_agg key is never read by CFGRL)",
    )

    @classmethod
    def default_critic_agg(cls, cfg) -> C.Aggregate:
        return "min"

    @property
    def policy(self) -> GenerativePolicy:
        return GenerativePolicy(
            self.cfg.base_hidden, self.spec.chunk_dim, "flow", self.cfg.flow_steps, self.cfg.geometry,
            dit=self.cfg.dit_spec(self.spec),
        )

    @property
    def value(self) -> Ensemble:
        return Ensemble(self.cfg.value_hidden, 1, self.cfg.num_critics, layer_norm=True)

    def init(self, key):
        k_critic, k_value, k_base = jax.random.split(key, 3)
        obs, chunk = jnp.zeros((1, self.spec.obs_dim)), jnp.zeros((1, self.spec.chunk_dim))
        return {
            "critic": init_module(self.cfg.critic, k_critic, obs, chunk),
            "value": init_module(self.value, k_value, obs),
            "base": self.policy.init(k_base, self.spec.obs_dim + 1),
        }

    def v(self, value_params, obs):
        """(num_critics, batch) values."""
        return self.value.apply({"params": value_params}, net_obs(obs, "value"))[..., 0]

    @staticmethod
    def conditioned(obs, label):
        return jnp.concatenate([obs, jnp.broadcast_to(label, (len(obs), 1))], -1)

    def optimality_labels(self, params, target_params, obs, chunk):
        """Per row, the share of value networks below the target critic: mean_k 1[Qbar(s, a) > V_k(s)]."""
        q = C.aggregate(C.q_values(self.cfg.critic, target_params["critic"], net_obs(obs, "target_critic"), chunk), self.cfg.critic_agg)
        above = (q[None] - self.v(params["value"], obs) > 0).astype(jnp.float32)
        return jax.lax.stop_gradient(jnp.mean(above, axis=0))

    def act(self, params, obs, key):
        def condition(label):
            return self.policy.bind(params["base"], self.conditioned(net_obs(obs, "base"), label))

        cond, uncond, w = condition(OPTIMAL), condition(UNCONDITIONAL), self.cfg.guidance

        def guided(z, t, h):
            v_u = uncond(z, t, h)
            return v_u + w * (cond(z, t, h) - v_u)

        return jnp.clip(self.policy.raw_sample(guided, self.policy.noise(key, batch_size(obs))), -1.0, 1.0)

    def bc_loss(self, params, obs, chunk, key):
        """The unconditional policy's flow-matching loss (the behaviour-cloning part)."""
        return self.policy.loss(params["base"], self.conditioned(net_obs(obs, "base"), UNCONDITIONAL), chunk, key)

    def loss(self, params, target_params, batch, key):
        k_noise, k_time = jax.random.split(key)
        obs, chunk = batch["observations"], batch["actions"]

        # IQL: each V_k is an upper expectile of the target critic; Q_k bootstraps from V_k.
        target_q = C.aggregate(C.q_values(self.cfg.critic, target_params["critic"], net_obs(obs, "target_critic"), chunk), self.cfg.critic_agg)
        value_loss = expectile_loss(target_q[None] - self.v(params["value"], obs), self.cfg.expectile)
        next_v = self.v(params["value"], batch["next_observations"])
        td_target = C.chunk_target(batch, next_v, self.spec.gamma, self.spec.chunk_len)
        q = C.q_values(self.cfg.critic, params["critic"], net_obs(obs, "critic"), chunk)
        critic_loss = jnp.mean(jnp.square(q - td_target))

        # Conditional pass on positive-advantage rows, unconditional pass on all rows.
        labels = self.optimality_labels(params, target_params, obs, chunk)
        noise = self.policy.noise(k_noise, batch_size(obs))
        t = jax.random.uniform(k_time, (batch_size(obs), 1))

        def errors(label):
            net = self.policy.bind(params["base"], self.conditioned(net_obs(obs, "base"), label))
            return flows.flow_matching_errors(net, chunk, noise, t)

        guided_loss = jnp.mean(labels * errors(OPTIMAL))
        bc_loss = jnp.mean(errors(UNCONDITIONAL))

        loss = critic_loss + value_loss + guided_loss + self.cfg.uncond_weight * bc_loss
        return loss, {
            "loss/critic": critic_loss,
            "loss/value": value_loss,
            "loss/guided": guided_loss,
            "loss/bc": bc_loss,
            "optimal_fraction": jnp.mean(labels),
            "q/data": jnp.mean(q),
            "q/target": jnp.mean(td_target),
        }
