"""`EncodedAgent`, the one wrapper that lets every agent train on image observations, and
`build_agent`, the factory that wraps an agent when its spec holds images; see docs/data.md
("Image encoders"). The networks are in `lps.nets.encoders`, the random shift in `lps.nets.augment`.

`EncodedAgent` builds the inner agent for the feature width and hands it one feature array per
network (read with `lps.nets.observations.net_obs`). As in the paper's release, every network owns
its encoder (`params["<network>_encoder"]`, the target critic's a Polyak copy listed in
`target_keys`), and random shift runs inside the jitted update with probability `augment_prob`;
acting never augments. `shared_encoder=True` (`--shared-encoder`, ours) uses one encoder for all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np

from lps.agents import make_agent
from lps.agents.base import Spec
from lps.nets.augment import augment_pair
from lps.nets.encoders import ObservationEncoder, cameras

EncoderName = Literal["auto", "none", "impala", "impala-small"]  # impala*: `lps.nets.encoders.ARCHS`


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
