"""The chunked critic (Q-chunking): an ensemble `Q_j(s, a_{t:t+H})` over whole action chunks,
its n-step target and the Polyak-averaged target network. Every critic-based agent uses this.

Target for a chunk starting at t (docs/method.md):
    y = sum_{k<H} gamma^k r_{t+k} + gamma^H * m * agg_j Qbar_j(s_{t+H}, pi(s_{t+H}))
with `m` the product of the chunk's masks. The discounted sum and `m` come from the sampler
(`lps.data.sampler`), so here the target is one line.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp

from lps.nets.mlp import Ensemble
from lps.nets.observations import net_obs

Aggregate = Literal["min", "mean"]


def chunk_critic(hidden: Sequence[int], size: int) -> Ensemble:
    """Q ensemble over `[s, a_chunk]`; LayerNorm keeps offline Q-values from blowing up."""
    return Ensemble(tuple(hidden), 1, size, layer_norm=True)


def q_values(critic: Ensemble, params, obs: jnp.ndarray, chunk: jnp.ndarray) -> jnp.ndarray:
    """(ensemble, batch) Q-values."""
    return critic.apply({"params": params}, obs, chunk)[..., 0]


def aggregate(q: jnp.ndarray, how: Aggregate) -> jnp.ndarray:
    if how not in ("min", "mean"):
        # None reaches here only if an agent was built without lps.agents.make_agent/resolve_config.
        raise ValueError(
            f"critic aggregation must be 'min' or 'mean', got {how!r}; build agents with lps.agents.make_agent"
        )
    return jnp.min(q, axis=0) if how == "min" else jnp.mean(q, axis=0)


def chunk_target(batch: dict, next_q: jnp.ndarray, gamma: float, chunk_len: int) -> jnp.ndarray:
    """The Q-chunking target y; `next_q` is the aggregated target Q at the chunk's end."""
    bootstrap = gamma**chunk_len * batch["chunk_mask"] * next_q
    return jax.lax.stop_gradient(batch["chunk_return"] + bootstrap)


def critic_loss(q: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Every ensemble member regresses to the same target."""
    return jnp.mean(jnp.square(q - target[None]))


def normalised_q_loss(q: jnp.ndarray) -> jnp.ndarray:
    """`-Q / mean|Q|`: a policy loss whose scale does not depend on the reward scale."""
    return -jnp.mean(q) / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)) + 1e-6)


def polyak(target, online, tau: float):
    return jax.tree_util.tree_map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


@dataclasses.dataclass(frozen=True)
class CriticConfig:
    """The chunked critic's settings, shared by every critic-based agent's config."""

    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Critic MLP widths (GELU + LayerNorm)."""
    num_critics: int = 2
    critic_agg: Aggregate | None = None
    """How the target critics are combined in the bootstrap (min or mean); None: the agent's
    published choice (`lps agents` shows it), filled in when the agent is built."""
    tau: float = 0.005
    """Polyak rate of the target critic."""

    @property
    def critic(self) -> Ensemble:
        return chunk_critic(self.critic_hidden, self.num_critics)


def td_loss(cfg: CriticConfig, params, target_params, batch: dict, next_chunk: jnp.ndarray, spec):
    """The critic's loss (on `params["critic"]`) given the policy's chunk at the next observation."""
    # The target critic sees its own (Polyak-averaged) encoder's features under EncodedAgent.
    next_obs = net_obs(batch["next_observations"], "target_critic")
    next_q = q_values(cfg.critic, target_params["critic"], next_obs, next_chunk)
    target = chunk_target(batch, aggregate(next_q, cfg.critic_agg), spec.gamma, spec.chunk_len)
    q = q_values(cfg.critic, params["critic"], net_obs(batch["observations"], "critic"), batch["actions"])
    return critic_loss(q, target), {"q/data": jnp.mean(q), "q/target": jnp.mean(target)}
