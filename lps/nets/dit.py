"""Diffusion transformers (DiT) over an action chunk: the LPS paper's real-robot base policy; see
docs/robot-data.md ("The robot preset").

Both have the call signature of the MLP they replace, `net(cond, z, t, h) -> chunk (B, H * A)`:
- `MeanFlowDiT` (`--base-arch mfdit`, the robot preset's): the release's `MFDiT_REAL` as read,
  tokens [observation tokens, H action tokens], adaLN from the embeddings of t and h only;
- `DiT` (`--base-arch dit`, ours): H action tokens, the observation entering through adaLN-Zero.
Both start as the identity in every block (zero gates), so a deep one trains from the start.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lps.nets.mlp import default_init


def time_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
    """Sinusoidal features of a time in [0, 1]. Unscaled on purpose: MeanFlow differentiates the
    network in t (a JVP), and fast-varying features would make that derivative huge."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.reshape(-1, 1) * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def split_chunk(z: jnp.ndarray, tokens: int) -> jnp.ndarray:
    """(B, H*A) -> (B, H, A): one token per action of the chunk."""
    batch, dim = z.shape
    if dim % tokens:
        raise ValueError(f"a chunk of {dim} numbers does not split into {tokens} tokens")
    return z.reshape(batch, tokens, dim // tokens)


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
        x = nn.Dense(self.width, kernel_init=default_init())(split_chunk(z, self.tokens))
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


# --- the public release's MeanFlow DiT (MFDiT_REAL) ------------------------------------------


def small_kaiming(scale: float = 0.01):
    """The release's init of every linear layer: a Kaiming (fan-in) normal at 0.01 of its variance."""
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class ScaledRMSNorm(nn.Module):
    """RMSNorm whose output has RMS sqrt(dim) (times a learned gain), as the release scales it."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        gain = self.param("g", nn.initializers.ones, (dim,))
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps) * math.sqrt(dim) * gain


class TimeEmbedder(nn.Module):
    """256 sinusoidal frequencies of a time -> Dense -> SiLU -> Dense."""

    width: int
    frequencies: int = 256

    @nn.compact
    def __call__(self, t):
        hidden = nn.Dense(self.width, kernel_init=small_kaiming())(time_embedding(t, self.frequencies))
        return nn.Dense(self.width, kernel_init=small_kaiming())(nn.silu(hidden))


class QKNormAttention(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x):
        batch, length, width = x.shape
        head_dim = width // self.heads
        qkv = nn.Dense(3 * width, use_bias=True, kernel_init=small_kaiming(), name="qkv")(x)
        q, k, v = jnp.moveaxis(qkv.reshape(batch, length, 3, self.heads, head_dim), 2, 0)
        q, k = ScaledRMSNorm(name="q_norm")(q), ScaledRMSNorm(name="k_norm")(k)
        weights = jax.nn.softmax(jnp.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(head_dim), axis=-1)
        out = jnp.einsum("bhlm,bmhd->blhd", weights, v).reshape(batch, length, width)
        return nn.Dense(width, kernel_init=small_kaiming(), name="proj")(out)


class MeanFlowDiTBlock(nn.Module):
    heads: int
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x, c):
        width = x.shape[-1]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(
            nn.Dense(6 * width, kernel_init=nn.initializers.zeros)(nn.silu(c)), 6, axis=-1
        )
        x = x + gate_a[:, None] * QKNormAttention(self.heads)(_modulate(ScaledRMSNorm()(x), shift_a, scale_a))
        y = _modulate(ScaledRMSNorm()(x), shift_m, scale_m)
        y = nn.Dense(int(self.mlp_ratio * width), kernel_init=small_kaiming())(y)
        y = nn.Dense(width, kernel_init=small_kaiming())(nn.gelu(y, approximate=True))
        return x + gate_m[:, None] * y


class MeanFlowDiT(nn.Module):
    """`(cond (B, c), z (B, H*A), t (B, 1), h (B, 1)) -> (B, H*A)`: the release's MFDiT_REAL.
    `state_dim` > 0: the last `state_dim` numbers of `cond` are the state (one token) and the rest
    the image features (another), as `EncodedAgent` concatenates them."""

    tokens: int
    width: int = 384
    depth: int = 12
    heads: int = 6
    state_dim: int = 0
    residual_scale: float = 0.1

    @nn.compact
    def __call__(self, cond, z, t, h):
        batch, dim = z.shape
        split = cond.shape[-1] - self.state_dim
        parts = [cond[:, :split], cond[:, split:]] if 0 < self.state_dim < cond.shape[-1] else [cond]
        observation = [nn.Dense(self.width, kernel_init=small_kaiming())(p)[:, None] for p in parts]
        actions = nn.Dense(self.width, kernel_init=small_kaiming())(split_chunk(z, self.tokens))
        x = jnp.concatenate([*observation, actions], axis=1)
        x = x + self.param("pos_embed", nn.initializers.normal(0.005), (1, x.shape[1], self.width))
        c = TimeEmbedder(self.width, name="t_embedder")(t) + TimeEmbedder(self.width, name="h_embedder")(h)
        for _ in range(self.depth):
            x = x + self.residual_scale * (MeanFlowDiTBlock(self.heads)(x, c) - x)
        shift, scale = jnp.split(nn.Dense(2 * self.width, kernel_init=nn.initializers.zeros)(nn.silu(c)), 2, axis=-1)
        x = _modulate(ScaledRMSNorm()(x), shift, scale)
        out = nn.Dense(dim // self.tokens, kernel_init=nn.initializers.zeros)(x[:, -self.tokens :])
        return out.reshape(batch, dim)
