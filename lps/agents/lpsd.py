"""LPSD — LPS with a stochastic latent actor and a distillation regulariser (LPS paper, appendix).

The latent actor sees sphere noise `e` as well, `z = l(s, e)`, and is kept near the base
policy's own sample from the same noise:

    L_l = -Q(s, pi_beta(s, l(s, e))) / |Q| + alpha * || pi_beta(s, l(s, e)) - pi_beta(s, e) ||^2

so, unlike LPS, it needs `alpha` tuned. Critic and base policy are LPS's (BC weight 1). See docs/agents.md.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lps.agents.base import batch_size, init_module, net_obs
from lps.agents.lps import LPS, LPSConfig
from lps.nets import critic as C
from lps.nets.latent import actor_latent


@dataclasses.dataclass(frozen=True)
class LPSDConfig(LPSConfig):
    alpha: float = 1.0
    """Distillation weight towards the base policy's own sample (the BC loss weight is 1)."""


@dataclasses.dataclass(frozen=True)
class LPSD(LPS):
    cfg: LPSDConfig
    name: ClassVar[str] = "lpsd"
    summary: ClassVar[str] = "LPS with a stochastic latent actor l(s, e) and a distillation weight alpha"
    key_fields: ClassVar[tuple[str, ...]] = ("alpha", "geometry", "backbone", "critic_agg", "actor_hidden")
    alpha_is_no_op: ClassVar[bool] = False
    notes: ClassVar[tuple[str, ...]] = (
        "alpha acts here (it weighs the distillation against -Q/|Q| in the latent actor's loss): tune it",
        "critic_agg as LPS (min; mean with a flow-matching backbone)",
    )
    bc_weight: ClassVar[float] = 1.0  # alpha weights the distillation instead

    def init(self, key):
        params = super().init(key)
        obs, noise = jnp.zeros((1, self.spec.obs_dim)), jnp.zeros((1, self.spec.chunk_dim))
        params["latent_actor"] = init_module(self.latent_actor, jax.random.fold_in(key, 1), obs, noise)
        return params

    def latent_from_noise(self, actor_params, obs, noise):
        features = net_obs(obs, "latent_actor")
        return actor_latent(self.latent_actor.apply({"params": actor_params}, features, noise), self.cfg.geometry)

    def latent(self, params, obs, key):
        return self.latent_from_noise(params["latent_actor"], obs, self.base.noise(key, batch_size(obs)))

    def actor_loss(self, params, obs, key):
        frozen = jax.lax.stop_gradient({"base": params["base"], "critic": params["critic"]})
        noise = self.base.noise(key, batch_size(obs))
        base_obs = net_obs(obs, "base", frozen=True)
        steered = self.base.sample(frozen["base"], base_obs, self.latent_from_noise(params["latent_actor"], obs, noise))
        q = C.q_values(self.cfg.critic, frozen["critic"], net_obs(obs, "critic", frozen=True), steered)
        distill_loss = jnp.mean(jnp.square(steered - self.base.sample(frozen["base"], base_obs, noise)))
        return C.normalised_q_loss(q) + self.cfg.alpha * distill_loss, {
            "loss/distill": distill_loss,
            "q/policy": jnp.mean(q),
        }
