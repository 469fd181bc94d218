"""What every agent shares: the problem spec it is built for and the interface the trainer uses
(docs/agents.md). An agent is a frozen dataclass of its config and the spec (hashable: a static
`jax.jit` argument) with

    init(key) -> params                       # dict of network parameter trees
    loss(params, target_params, batch, key)   # -> (scalar, metrics), all losses summed
    act(params, obs, key) -> chunk            # (B, H * A), inside [-1, 1]

`target_keys` names the entries of `params` that get a Polyak-averaged copy; the optimiser, the
target update and the loop belong to the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import jax

from lps.nets.observations import batch_size, net_obs  # noqa: F401  (what agents read their inputs with)


@dataclasses.dataclass(frozen=True)
class Spec:
    """The chunked problem an agent is built for."""

    obs_dim: int  # state-vector dims (0 for image-only observations)
    action_dim: int
    chunk_len: int = 5
    gamma: float = 0.99
    image_shape: tuple[int, ...] | None = None
    """(H, W, C) of image observations (`lps.agents.encoded`), None for state vectors: one frame."""
    frame_stack: int = 1
    """Frames the networks see, stacked on the channel axis (`--frame-stack`, `lps.data.frames`)."""
    state_features: int = 0
    """An image agent's inner spec (`lps.agents.encoded`): its observation is [camera features ||
    state], the last `state_features` numbers being the robot state (the release's DiT gives them
    their own token)."""
    cameras: tuple[tuple[str, tuple[int, int, int]], ...] = ()
    """Robot data: (name, (H, W, 3)) of each camera, sorted by name; observations are then
    `{"state", "image": {name: frames}}`, each camera at its own size with its own encoder."""

    def __post_init__(self):
        if self.image_shape is not None:  # JSON gives a list; the spec must stay hashable
            object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))
        cameras = tuple(sorted((str(name), tuple(int(d) for d in shape)) for name, shape in self.cameras))
        object.__setattr__(self, "cameras", cameras)

    @property
    def has_images(self) -> bool:
        return self.image_shape is not None or bool(self.cameras)

    def network_camera_shape(self, name: str) -> tuple[int, int, int]:
        """(H, W, K*3): camera `name`'s frames as the networks take them (the last K on channels)."""
        h, w, c = dict(self.cameras)[name]
        return (h, w, c * self.frame_stack)

    @property
    def network_image_shape(self) -> tuple[int, ...] | None:
        """(H, W, K*C): the image the networks take, the last K frames on the channel axis."""
        if self.image_shape is None:
            return None
        *hw, channels = self.image_shape
        return (*hw, channels * self.frame_stack)

    @property
    def chunk_dim(self) -> int:
        return self.action_dim * self.chunk_len


Params = dict[str, Any]


class Agent(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    target_keys: ClassVar[tuple[str, ...]]
    key_fields: ClassVar[tuple[str, ...]]  # config fields `lps agents` shows
    cfg: Any
    spec: Spec

    def init(self, key: jax.Array) -> Params: ...

    def loss(self, params: Params, target_params: Params, batch: dict, key: jax.Array): ...

    def act(self, params: Params, obs: jax.Array, key: jax.Array) -> jax.Array: ...


def init_module(module, key: jax.Array, *example_inputs):
    """Initialise a Flax module's parameters from example inputs (batch of one)."""
    return module.init(key, *example_inputs)["params"]
