"""Image encoders: IMPALA (`ImpalaEncoder`, its `ResidualBlock`) and `ObservationEncoder`, which
turns an array, an image batch or a robot `{"state", "image"}` observation into features (one
IMPALA per camera, the state appended); see docs/data.md ("Image encoders").

`lps.agents.encoded.EncodedAgent` gives each network one of these. Class names and submodule
names are those of the checkpoints (Flax names parameters by them): keep them.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lps.nets.mlp import default_init

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
