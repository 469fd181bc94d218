"""A diffusion transformer (DiT) over an action chunk: the LPS paper's real-robot base policy.

The chunk's H actions are H tokens. Each block is self-attention then an MLP, both with
adaptive LayerNorm (adaLN-Zero, Peebles & Xie 2023): a conditioning vector c (observation
features + sinusoidal embeddings of t and h) sets each block's shift, scale and gate, the gates
starting at zero so every block starts as the identity. Same call signature as the MLP it
replaces, `net(cond, z, t, h) -> chunk (B, H * A)`, so flows and agents do not change.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from lps.nets.mlp import default_init


def time_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
    """Sinusoidal features of a time in [0, 1]. Unscaled on purpose: MeanFlow differentiates the
    network in t (a JVP), and fast-varying features would make that derivative huge."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.reshape(-1, 1) * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _modulate(x, shift, scale):
    return x * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    width: int
    heads: int

    @nn.compact
    def __call__(self, x, c):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(
            nn.Dense(6 * self.width, kernel_init=nn.initializers.zeros)(nn.silu(c)), 6, axis=-1
        )
        y = _modulate(nn.LayerNorm(use_bias=False, use_scale=False)(x), shift_a, scale_a)
        y = nn.MultiHeadDotProductAttention(self.heads, kernel_init=default_init())(y, y)
        x = x + gate_a[:, None] * y
        y = _modulate(nn.LayerNorm(use_bias=False, use_scale=False)(x), shift_m, scale_m)
        y = nn.Dense(4 * self.width, kernel_init=default_init())(y)
        y = nn.Dense(self.width, kernel_init=default_init())(nn.gelu(y))
        return x + gate_m[:, None] * y


class DiT(nn.Module):
    """`(cond (B, c), z (B, H*A), t (B, 1), h (B, 1)) -> (B, H*A)` with `tokens = H`."""

    tokens: int
    width: int = 256
    depth: int = 4
    heads: int = 4

    @nn.compact
    def __call__(self, cond, z, t, h):
        batch, dim = z.shape
        if dim % self.tokens:
            raise ValueError(f"a chunk of {dim} numbers does not split into {self.tokens} tokens")
        x = nn.Dense(self.width, kernel_init=default_init())(z.reshape(batch, self.tokens, dim // self.tokens))
        x = x + self.param("position", nn.initializers.normal(0.02), (1, self.tokens, self.width))
        c = nn.Dense(self.width, kernel_init=default_init())(cond)
        for name, s in (("t", t), ("h", h)):
            e = time_embedding(s, self.width)
            c = c + nn.Dense(self.width, name=f"embed_{name}")(nn.silu(nn.Dense(self.width)(e)))
        for _ in range(self.depth):
            x = DiTBlock(self.width, self.heads)(x, c)
        shift, scale = jnp.split(nn.Dense(2 * self.width, kernel_init=nn.initializers.zeros)(nn.silu(c)), 2, axis=-1)
        x = _modulate(nn.LayerNorm(use_bias=False, use_scale=False)(x), shift, scale)
        return nn.Dense(dim // self.tokens, kernel_init=default_init())(x).reshape(batch, dim)
