"""Latent geometries: where a generative policy's noise lives, and how a latent actor's raw output
is mapped there (`--geometry`); see docs/method.md and docs/agents.md ("Ablations").

- `sphere`    noise and actor output on the sphere of radius sqrt(d), where a Gaussian's mass
              concentrates (LPS default): every latent the actor picks is one the base saw;
- `normal`    Gaussian noise, unconstrained actor output (the ablation: its norm drifts);
- `truncated` Gaussian truncated to [-b, b], actor output b * tanh (the ablation: it saturates),
              b = TRUNCATION_BOUND = 2.0 (~95 % of a Gaussian's per-coordinate mass).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Geometry = Literal["sphere", "normal", "truncated"]
GEOMETRIES: tuple[str, ...] = ("sphere", "normal", "truncated")
TRUNCATION_BOUND = 2.0
_EPS = 1e-6


def sphere_project(z: jnp.ndarray) -> jnp.ndarray:
    """Project each row of `z` onto the sphere of radius sqrt(d), d = z.shape[-1]."""
    d = z.shape[-1]
    norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True) + _EPS)
    return z / norm * jnp.sqrt(d)


def sample_latent(key: jax.Array, shape: tuple[int, ...], geometry: Geometry = "sphere") -> jnp.ndarray:
    """Noise for training or sampling a generative policy, `shape = (..., d)`."""
    if geometry == "sphere":
        return sphere_project(jax.random.normal(key, shape))
    if geometry == "normal":
        return jax.random.normal(key, shape)
    if geometry == "truncated":
        return jax.random.truncated_normal(key, -TRUNCATION_BOUND, TRUNCATION_BOUND, shape)
    raise ValueError(f"unknown latent geometry {geometry!r}; choose one of {GEOMETRIES}")


def actor_latent(raw: jnp.ndarray, geometry: Geometry = "sphere") -> jnp.ndarray:
    """Map a latent actor's raw network output into the latent space of `geometry`."""
    if geometry == "sphere":
        return sphere_project(raw)
    if geometry == "normal":
        return raw
    if geometry == "truncated":
        return TRUNCATION_BOUND * jnp.tanh(raw)
    raise ValueError(f"unknown latent geometry {geometry!r}; choose one of {GEOMETRIES}")
