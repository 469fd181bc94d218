"""Image observations: IMPALA encoders, random-shift augmentation, and `EncodedAgent`, the one
wrapper that lets every agent train on them; see docs/data.md ("Image encoders").

`ObservationEncoder` turns an array, an image batch or a robot `{"state", "image": {camera: ...}}`
dict into features (one IMPALA per camera, state appended). `EncodedAgent` builds the inner agent
for the feature width and hands it one feature array per network (read with
`lps.agents.base.net_obs`). As in the paper's release, every network owns its encoder
(`params["<network>_encoder"]`, the target critic's a Polyak copy listed in `target_keys`), and
random shift runs inside the jitted update with probability `augment_prob`; acting never
augments. `shared_encoder=True` (`--shared-encoder`, ours) uses one encoder for every network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lps.agents import make_agent
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
    """Per stack: 3x3 conv, 3x3 max-pool with stride 2, residual blocks; then ReLU, flatten and a
    dense feature layer with GELU (no LayerNorm, as FQL/Q-chunking/LPS build it). Takes uint8
    images (B, H, W, C) and scales them to [0, 1] itself."""

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
        return nn.gelu(nn.Dense(self.features, kernel_init=default_init())(x))


class ObservationEncoder(nn.Module):
    """Observation (array or {state, image}) -> features (B, F). Robot images ({state, image}) hold
    one camera per 3 channels: each camera gets its own IMPALA, their features are concatenated.
    With `frame_stack` K the channels hold K frames of every camera (oldest first, see
    `lps.data.frames`); a camera's IMPALA sees its K frames."""

    arch: str
    features: int
    frame_stack: int = 1

    @nn.compact
    def __call__(self, obs):
        stacks, blocks = ARCHS[self.arch]
        if isinstance(obs, dict) and isinstance(obs["image"], dict):  # cameras by name, each its own size
            per_camera = [ImpalaEncoder(stacks, blocks, self.features, name=f"camera_{name}")(frames)
                          for name, frames in sorted(obs["image"].items())]  # fmt: skip
            return jnp.concatenate([*per_camera, obs["state"].astype(jnp.float32)], axis=-1)
        if isinstance(obs, dict):  # runs trained before cameras had names: stacked on channels
            images = obs["image"]
            frame_channels = images.shape[-1] // self.frame_stack
            cams = cameras(frame_channels)
            per_camera = [ImpalaEncoder(stacks, blocks, self.features, name=f"camera{i}")(
                              camera_frames(images, i, frame_channels, self.frame_stack))
                          for i in range(cams)] if cams > 1 else [ImpalaEncoder(stacks, blocks, self.features)(images)]  # fmt: skip
            return jnp.concatenate([*per_camera, obs["state"].astype(jnp.float32)], axis=-1)
        if obs.ndim == 4:
            return ImpalaEncoder(stacks, blocks, self.features)(obs)
        return obs.astype(jnp.float32)


def cameras(channels: int) -> int:
    """Cameras in a robot image stacked on the channel axis (three channels each; else one)."""
    return channels // 3 if channels % 3 == 0 and channels > 3 else 1


def camera_frames(images: jax.Array, camera: int, frame_channels: int, frame_stack: int) -> jax.Array:
    """Camera `camera`'s three channels of each of the K stacked frames: (B, H, W, 3K)."""
    return jnp.concatenate([images[..., f * frame_channels + 3 * camera : f * frame_channels + 3 * camera + 3]
                            for f in range(frame_stack)], axis=-1)  # fmt: skip


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


# --- observation specs ------------------------------------------------------------------------


def spec_fields(observations) -> dict[str, Any]:
    """The `Spec` fields of a dataset's observations (array or dict, rows first): obs_dim, and
    image_shape (pixels, or robot cameras stacked on channels) or cameras (robot cameras by name)."""
    if isinstance(observations, dict):
        if set(observations) != {"state", "image"}:
            raise ValueError(f"dict observations need exactly the keys 'state' and 'image', got {sorted(observations)}")
        obs_dim, image = int(observations["state"].shape[1]), observations["image"]
        if isinstance(image, dict):
            return {"obs_dim": obs_dim, "cameras": tuple((k, tuple(int(d) for d in v.shape[1:])) for k, v in image.items())}
        return {"obs_dim": obs_dim, "image_shape": tuple(int(d) for d in image.shape[1:])}
    if np.ndim(observations) == 4:
        return {"obs_dim": 0, "image_shape": tuple(int(d) for d in observations.shape[1:])}
    return {"obs_dim": int(observations.shape[1])}


def describe_observations(spec: Spec) -> str:
    """What a spec's observations are, for messages: 'state (7,), cameras front (64, 64, 3), ...'."""
    parts = [f"state ({spec.obs_dim},)"] if spec.obs_dim else []
    if spec.image_shape is not None:
        parts.append(f"image {spec.image_shape}")
    parts += [f"camera '{name}' {shape}" for name, shape in spec.cameras]
    return ", ".join(parts)


def resolve_encoder(name: str, spec: Spec) -> str:
    """`auto`: none for state vectors, impala for robot data ({state, image}), impala-small for pixels."""
    if name == "auto":
        if not spec.has_images:
            return "none"
        return "impala" if spec.obs_dim > 0 else "impala-small"
    if name != "none" and not spec.has_images:
        raise ValueError(f"--encoder {name} needs image observations, but this dataset's observations are state vectors; use --encoder none")
    if name == "none" and spec.has_images:
        raise ValueError(f"observations hold images ({describe_observations(spec)}); they need an image encoder "
                         "(--encoder impala or impala-small)")  # fmt: skip
    return name


def example_observation(spec: Spec):
    """A batch of one zero observation with the spec's structure."""
    state = jnp.zeros((1, spec.obs_dim), jnp.float32)
    if spec.cameras:
        return {"state": state, "image": {name: jnp.zeros((1, *spec.network_camera_shape(name)), jnp.uint8)
                                          for name, _ in spec.cameras}}  # fmt: skip
    if spec.image_shape is None:
        return state
    image = jnp.zeros((1, *spec.network_image_shape), jnp.uint8)
    return {"state": state, "image": image} if spec.obs_dim > 0 else image


# --- the wrapper ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncodedAgent:
    """Any agent on image observations (see the module docstring). Hashable, like every agent."""

    inner: Any
    spec: Spec  # of the raw observations (state dim + image shape)
    arch: str = "impala"
    features: int = 512
    augment_shift: int = 3
    augment_prob: float = 0.5
    shared_encoder: bool = False
    networks: tuple[str, ...] = ()
    """The inner agent's networks (its params' keys), each with its own encoder; filled in."""

    key_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if not self.networks:
            shapes = jax.eval_shape(self.inner.init, jax.random.PRNGKey(0))
            object.__setattr__(self, "networks", tuple(sorted(shapes)))

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
    def encoder_keys(self) -> tuple[str, ...]:
        return ("encoder",) if self.shared_encoder else tuple(f"{net}_encoder" for net in self.networks)

    @property
    def target_keys(self) -> tuple[str, ...]:
        if self.shared_encoder:
            return self.inner.target_keys
        return (*self.inner.target_keys, *(f"{net}_encoder" for net in self.inner.target_keys))

    @property
    def encoder(self) -> ObservationEncoder:
        return ObservationEncoder(self.arch, self.features, self.spec.frame_stack)

    def init(self, key):
        k_encoder, k_inner = jax.random.split(key)
        params = dict(self.inner.init(k_inner))
        example = example_observation(self.spec)
        for i, name in enumerate(self.encoder_keys):
            params[name] = self.encoder.init(jax.random.fold_in(k_encoder, i), example)["params"]
        return params

    def encode(self, encoder_params, obs):
        return self.encoder.apply({"params": encoder_params}, obs)

    def features_by_network(self, params, target_params, obs):
        """The inner agent's observation: one feature array per network (and per target network);
        with the shared encoder, the one feature array. Unused entries are pruned by XLA."""
        if self.shared_encoder:
            return self.encode(params["encoder"], obs)
        by_net = {net: self.encode(params[f"{net}_encoder"], obs) for net in self.networks}
        for net in self.inner.target_keys if target_params is not None else ():
            by_net[f"target_{net}"] = self.encode(target_params[f"{net}_encoder"], obs)
        return by_net

    def act(self, params, obs, key):
        return self.inner.act(self._inner_params(params), self.features_by_network(params, None, obs), key)

    def loss(self, params, target_params, batch, key):
        k_aug, k_inner = jax.random.split(key)
        obs, next_obs = augment_pair(
            k_aug, batch["observations"], batch["next_observations"], self.augment_shift, self.augment_prob
        )
        inner_batch = {
            **batch,
            "observations": self.features_by_network(params, target_params, obs),
            "next_observations": jax.lax.stop_gradient(self.features_by_network(params, target_params, next_obs)),
        }
        return self.inner.loss(self._inner_params(params), target_params, inner_batch, k_inner)

    def _inner_params(self, params: dict) -> dict:
        return {k: v for k, v in params.items() if k not in self.encoder_keys}


def scan_updates(agent) -> bool:
    """Whether the trainer should scan its updates on the device (see `lps.training.update.make_multi_update`):
    not for image agents on a CPU, where XLA runs convolutions inside a loop body far slower."""
    return not (isinstance(agent, EncodedAgent) and jax.default_backend() == "cpu")


def feature_dim(spec: Spec, arch: str, features: int) -> int:
    del arch
    if spec.cameras:
        per_camera = len(spec.cameras)  # robot data: one IMPALA per camera
    else:
        per_camera = cameras(spec.image_shape[-1]) if spec.obs_dim > 0 else 1
    return features * per_camera + spec.obs_dim


def build_agent(agent_name: str, agent_cfg, spec: Spec, encoder: str = "auto", encoder_features: int = 512,
                augment_shift: int = 3, augment_prob: float | None = None, shared_encoder: bool = False):  # fmt: skip
    """The agent for `spec`: the plain agent on state vectors, else wrapped in an `EncodedAgent`."""
    arch = resolve_encoder(encoder, spec)
    if arch == "none":
        return make_agent(agent_name, agent_cfg, spec)
    inner_spec = Spec(feature_dim(spec, arch, encoder_features), spec.action_dim, spec.chunk_len, spec.gamma,
                      state_features=spec.obs_dim)
    if augment_prob is None:  # the release's p_aug, pixels and robot alike
        augment_prob = 0.5
    return EncodedAgent(make_agent(agent_name, agent_cfg, inner_spec), spec, arch, encoder_features, augment_shift,
                        augment_prob, shared_encoder)  # fmt: skip
