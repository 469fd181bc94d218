"""Random-shift augmentation of image observations (DrQ): pad by `shift` pixels with edge values,
crop back at a random offset, one offset per sample shared by its observation and next
observation, the whole batch with probability `prob`; see docs/data.md ("Image encoders").
`lps.agents.encoded.EncodedAgent` applies it inside the jitted update; acting never augments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shift_offsets(key: jax.Array, batch: int, shift: int) -> jax.Array:
    """One (row, column) crop offset per sample, in [0, 2 * shift]."""
    return jax.random.randint(key, (batch, 2), 0, 2 * shift + 1)


def random_shift(images: jax.Array, offsets: jax.Array, shift: int) -> jax.Array:
    """Pad each image by `shift` pixels (edge values) and crop back at its offset (DrQ)."""
    if shift == 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def augment(offsets: jax.Array, obs, shift: int):
    """Random shift of the image part of an observation (state vectors pass through); every camera
    of a robot observation by the same offsets."""
    if isinstance(obs, dict):
        return {**obs, "image": jax.tree_util.tree_map(lambda x: random_shift(x, offsets, shift), obs["image"])}
    return random_shift(obs, offsets, shift) if obs.ndim == 4 else obs


def augment_pair(key: jax.Array, obs, next_obs, shift: int, prob: float):
    """Shift a batch's observations and next observations by the same per-sample offsets, the
    whole batch with probability `prob` (else both unchanged)."""
    if shift == 0 or prob <= 0:
        return obs, next_obs
    k_offsets, k_apply = jax.random.split(key)
    offsets = shift_offsets(k_offsets, jax.tree_util.tree_leaves(obs)[0].shape[0], shift)
    shifted = augment(offsets, obs, shift), augment(offsets, next_obs, shift)
    if prob >= 1:
        return shifted
    apply = jax.random.bernoulli(k_apply, prob)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(apply, a, b), shifted, (obs, next_obs))
