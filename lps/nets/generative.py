"""A generative (noise -> action chunk) policy: network, training noise, loss and sampler in one
object, so every agent builds its base or BC policy the same way; see docs/method.md.

    policy = GenerativePolicy(hidden=(512,) * 4, chunk_dim=25, kind="meanflow")
    params = policy.init(key, obs_dim)
    loss = policy.loss(params, obs, chunk, key)            # behaviour cloning
    chunk = policy.sample(params, obs, policy.noise(key, batch))  # in [-1, 1]

`kind="meanflow"`: one call; `kind="flow"`: `steps` Euler steps (both differentiable). The network
sees `[s, z, t, h]` (CFGRL appends its label to s); `dit=DiTSpec(...)` uses `lps.nets.dit` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from lps.nets import flows
from lps.nets.dit import DiT, MeanFlowDiT
from lps.nets.latent import Geometry, sample_latent
from lps.nets.mlp import ConcatMLP

Kind = Literal["meanflow", "flow"]


@dataclasses.dataclass(frozen=True)
class DiTSpec:
    tokens: int  # the chunk length H: one token per action
    width: int = 256
    depth: int = 4
    heads: int = 4
    arch: Literal["mfdit", "dit"] = "dit"
    state_dim: int = 0  # mfdit: the state's share of the observation features (its own token)


@dataclasses.dataclass(frozen=True)
class BaseNetConfig:
    """The base (generative) policy's network, mixed into every agent config that has one."""

    base_arch: Literal["mlp", "mfdit", "dit"] = "mlp"
    """Base policy network: an MLP over [s, z, t, h] (--base-hidden); mfdit: the public release's MeanFlow
    DiT (observation and H action tokens, the robot preset's); dit: ours (H action tokens, observation via adaLN)."""
    dit_width: int = 256
    dit_depth: int = 4
    """DiT blocks."""
    dit_heads: int = 4

    def dit_spec(self, spec) -> DiTSpec | None:
        if self.base_arch == "mlp":
            return None
        if self.dit_width <= 0 or self.dit_depth <= 0 or self.dit_heads <= 0 or self.dit_width % self.dit_heads:
            raise ValueError(
                f"--dit-width ({self.dit_width}), --dit-depth ({self.dit_depth}) and --dit-heads ({self.dit_heads}) "
                "must be positive, with the width a multiple of the heads"
            )
        # The release's DiT gives the state its own token when it stands beside image features.
        return DiTSpec(spec.chunk_len, self.dit_width, self.dit_depth, self.dit_heads, self.base_arch,
                       spec.state_features)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GenerativePolicy:
    hidden: tuple[int, ...]
    chunk_dim: int
    kind: Kind = "meanflow"
    steps: int = 10  # Euler steps of a flow policy
    geometry: Geometry = "sphere"  # where the training (and sampling) noise lives
    parameterisation: flows.Parameterisation = "action"  # of a MeanFlow policy
    dit: DiTSpec | None = None  # a DiT instead of the MLP (`hidden` is then unused)

    @property
    def net(self) -> ConcatMLP | DiT:
        if self.dit is not None and self.dit.arch == "mfdit":
            return MeanFlowDiT(self.dit.tokens, self.dit.width, self.dit.depth, self.dit.heads, self.dit.state_dim)
        if self.dit is not None:
            return DiT(self.dit.tokens, self.dit.width, self.dit.depth, self.dit.heads)
        return ConcatMLP(tuple(self.hidden), self.chunk_dim)

    def init(self, key: jax.Array, cond_dim: int):
        time = jnp.zeros((1, 1))
        return self.net.init(key, jnp.zeros((1, cond_dim)), jnp.zeros((1, self.chunk_dim)), time, time)["params"]

    def bind(self, params, cond: jnp.ndarray) -> flows.Net:
        return lambda z, t, h: self.net.apply({"params": params}, cond, z, t, h)

    def noise(self, key: jax.Array, batch: int) -> jnp.ndarray:
        return sample_latent(key, (batch, self.chunk_dim), self.geometry)

    def loss(self, params, cond: jnp.ndarray, chunk: jnp.ndarray, key: jax.Array, weights=None) -> jnp.ndarray:
        """The behaviour-cloning loss; `weights` (B,): clone only the rows weighted (a batch's `bc_weights`)."""
        noise_key, time_key = jax.random.split(key)
        noise = self.noise(noise_key, chunk.shape[0])
        net = self.bind(params, cond)
        if self.kind == "meanflow":
            return flows.meanflow_loss(net, chunk, noise, time_key, self.parameterisation, weights)
        return flows.flow_matching_loss(net, chunk, noise, time_key, weights)

    def sample(self, params, cond: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
        return jnp.clip(self.raw_sample(self.bind(params, cond), z), -1.0, 1.0)

    def raw_sample(self, net: flows.Net, z: jnp.ndarray) -> jnp.ndarray:
        """The unclipped sample of a bound network (CFGRL guides the network before sampling)."""
        if self.kind == "meanflow":
            return flows.meanflow_sample(net, z, self.parameterisation)
        return flows.euler_sample(net, z, self.steps)
