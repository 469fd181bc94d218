"""Image observations: IMPALA encoders, random-shift augmentation, and the one wrapper that lets
every agent train on them.

An observation is an array (state vectors (B, d), or images (B, H, W, C) uint8) or a dict
`{"state": (B, d) float32, "image": (B, H, W, C) uint8}` (robot data: cameras stacked on C).
`ObservationEncoder` turns any of them into a feature vector: images go through an IMPALA
ResNet, the state is appended as it is.

`EncodedAgent` wraps any agent without the agent knowing: the inner agent is built for the
feature dimension, the wrapper owns `params["encoder"]`, encodes the batch's observations and
next observations, and calls the inner agent's loss and acting rule on features. One encoder is
shared by the critic, the base policy and the latent actor (one CNN pass per image instead of
one per network). How it is trained, and why:

- every loss of the agent reaches the encoder through the features of the chunk's first
  observation (critic TD, behaviour cloning, and the policy's -Q/|Q|, which is normalised to a
  scale of about one, like the other terms);
- the next observation's features (for the bootstrap target and the policy's next chunk) come
  from the online encoder under stop_gradient: the TD target stays a target, and no second
  (Polyak) copy of the CNN is kept or run;
- augmentation (random shift: pad by `shift` pixels with edge values, crop back at a random
  offset per image) is applied to both observations inside the jitted update, to a whole batch
  with probability `augment_prob` (FQL's `p_aug`: 0.5 for pixel tasks); acting never augments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lps.agents.base import Spec
from lps.nets.mlp import default_init

EncoderName = Literal["auto", "none", "impala", "impala-small"]

# name -> (channels per stack, residual blocks per stack); IMPALA (Espeholt et al. 2018) as used
# by FQL/Q-chunking for pixels (`impala-small`) and by LPS on the real robot (`impala`).
ARCHS: dict[str, tuple[tuple[int, ...], int]] = {
    "impala": ((16, 32, 32), 2),
    "impala-small": ((16, 32, 32), 1),
}


class ResidualBlock(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.channels, (3, 3), kernel_init=default_init())(nn.relu(x))
        y = nn.Conv(self.channels, (3, 3), kernel_init=default_init())(nn.relu(y))
        return x + y


class ImpalaEncoder(nn.Module):
    """Per stack: 3x3 conv, 3x3 max-pool with stride 2, residual blocks; then a dense feature layer
    with LayerNorm. Takes uint8 images (B, H, W, C) and scales them to [0, 1] itself."""

    stacks: Sequence[int]
    blocks: int
    features: int

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32) / 255.0
        for channels in self.stacks:
            x = nn.Conv(channels, (3, 3), kernel_init=default_init())(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for _ in range(self.blocks):
                x = ResidualBlock(channels)(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        return nn.gelu(nn.LayerNorm()(nn.Dense(self.features, kernel_init=default_init())(x)))


class ObservationEncoder(nn.Module):
    """Observation (array or {state, image}) -> features (B, F)."""

    arch: str
    features: int

    @nn.compact
    def __call__(self, obs):
        stacks, blocks = ARCHS[self.arch]
        if isinstance(obs, dict):
            image = ImpalaEncoder(stacks, blocks, self.features)(obs["image"])
            return jnp.concatenate([image, obs["state"].astype(jnp.float32)], axis=-1)
        if obs.ndim == 4:
            return ImpalaEncoder(stacks, blocks, self.features)(obs)
        return obs.astype(jnp.float32)


def random_shift(key: jax.Array, images: jax.Array, shift: int) -> jax.Array:
    """Pad each image by `shift` pixels (edge values) and crop back at a random offset (DrQ)."""
    if shift == 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * shift + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def augment(key: jax.Array, obs, shift: int):
    """Random shift of the image part of an observation (state vectors pass through)."""
    if isinstance(obs, dict):
        return {**obs, "image": random_shift(key, obs["image"], shift)}
    return random_shift(key, obs, shift) if obs.ndim == 4 else obs


# --- observation specs ------------------------------------------------------------------------


def observation_spec(observations) -> tuple[int, tuple[int, ...] | None]:
    """(state dim, image shape or None) of a dataset's observations (array or dict, rows first)."""
    if isinstance(observations, dict):
        if set(observations) != {"state", "image"}:
            raise ValueError(f"dict observations need exactly the keys 'state' and 'image', got {sorted(observations)}")
        return int(observations["state"].shape[1]), tuple(int(d) for d in observations["image"].shape[1:])
    if np.ndim(observations) == 4:
        return 0, tuple(int(d) for d in observations.shape[1:])
    return int(observations.shape[1]), None


def resolve_encoder(name: str, spec: Spec) -> str:
    """`auto`: none for state vectors, impala for robot data ({state, image}), impala-small for pixels."""
    if name == "auto":
        if spec.image_shape is None:
            return "none"
        return "impala" if spec.obs_dim > 0 else "impala-small"
    if name != "none" and spec.image_shape is None:
        raise ValueError(f"--encoder {name} needs image observations, but this dataset's observations are state vectors; use --encoder none")
    if name == "none" and spec.image_shape is not None:
        raise ValueError(f"observations hold images {spec.image_shape}; they need an image encoder (--encoder impala or impala-small)")
    return name


def example_observation(spec: Spec):
    """A batch of one zero observation with the spec's structure."""
    state = jnp.zeros((1, spec.obs_dim), jnp.float32)
    if spec.image_shape is None:
        return state
    image = jnp.zeros((1, *spec.image_shape), jnp.uint8)
    return {"state": state, "image": image} if spec.obs_dim > 0 else image


# --- the wrapper ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncodedAgent:
    """Any agent on image observations (see the module docstring). Hashable, like every agent."""

    inner: Any
    spec: Spec  # of the raw observations (state dim + image shape)
    arch: str = "impala"
    features: int = 512
    augment_shift: int = 4
    augment_prob: float = 1.0

    key_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def summary(self) -> str:
        return self.inner.summary

    @property
    def cfg(self):
        return self.inner.cfg

    @property
    def target_keys(self) -> tuple[str, ...]:
        return self.inner.target_keys

    @property
    def encoder(self) -> ObservationEncoder:
        return ObservationEncoder(self.arch, self.features)

    def init(self, key):
        k_encoder, k_inner = jax.random.split(key)
        params = dict(self.inner.init(k_inner))
        params["encoder"] = self.encoder.init(k_encoder, example_observation(self.spec))["params"]
        return params

    def encode(self, params, obs):
        return self.encoder.apply({"params": params["encoder"]}, obs)

    def act(self, params, obs, key):
        return self.inner.act(_without_encoder(params), self.encode(params, obs), key)

    def loss(self, params, target_params, batch, key):
        k_aug, k_inner = jax.random.split(key)
        n = batch["actions"].shape[0]
        # Both observations in one encoder call (one augmentation draw per image).
        both = jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a, b]), batch["observations"], batch["next_observations"]
        )
        if self.augment_prob >= 1:
            both = augment(k_aug, both, self.augment_shift)
        elif self.augment_prob > 0:
            k_aug, k_apply = jax.random.split(k_aug)
            apply = jax.random.bernoulli(k_apply, self.augment_prob)
            both = jax.tree_util.tree_map(
                lambda shifted, plain: jnp.where(apply, shifted, plain), augment(k_aug, both, self.augment_shift), both
            )
        features = self.encode(params, both)
        inner_batch = {
            **batch,
            "observations": features[:n],
            "next_observations": jax.lax.stop_gradient(features[n:]),
        }
        return self.inner.loss(_without_encoder(params), target_params, inner_batch, k_inner)


def scan_updates(agent) -> bool:
    """Whether the trainer should scan its updates on the device (see `lps.training.update.make_multi_update`):
    not for image agents on a CPU, where XLA runs convolutions inside a loop body far slower."""
    return not (isinstance(agent, EncodedAgent) and jax.default_backend() == "cpu")


def _without_encoder(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "encoder"}


def feature_dim(spec: Spec, arch: str, features: int) -> int:
    del arch
    return features + spec.obs_dim


def build_agent(agent_name: str, agent_cfg, spec: Spec, encoder: str = "auto", encoder_features: int = 512,
                augment_shift: int = 4, augment_prob: float | None = None):  # fmt: skip
    """The agent for `spec`: the plain agent on state vectors, else wrapped in an `EncodedAgent`."""
    from lps.agents import make_agent

    arch = resolve_encoder(encoder, spec)
    if arch == "none":
        return make_agent(agent_name, agent_cfg, spec)
    inner_spec = Spec(feature_dim(spec, arch, encoder_features), spec.action_dim, spec.chunk_len, spec.gamma)
    if augment_prob is None:  # FQL's p_aug for pixel tasks; robot data ({state, image}) every batch
        augment_prob = 0.5 if spec.obs_dim == 0 else 1.0
    return EncodedAgent(make_agent(agent_name, agent_cfg, inner_spec), spec, arch, encoder_features, augment_shift,
                        augment_prob)  # fmt: skip
