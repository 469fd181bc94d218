"""Frame stacking (`--frame-stack K`): the policy sees its last K camera frames, stacked on the
channel axis, oldest first; see docs/data.md ("Pixel tasks").

Frames are consecutive environment steps; before an episode has K the first is repeated, and a
robot observation's state stays the latest step's. Data and the replay buffer keep one frame per
row: the stack is built where a batch is gathered (`stacked_rows`, on the device) and where a
policy acts (`Frames`, on the host).
"""

from __future__ import annotations

from collections import deque

import jax
import jax.numpy as jnp
import numpy as np


def is_image(x) -> bool:
    """Whether a leaf of a batch of observations (rows first) is an image batch (B, H, W, C)."""
    return np.ndim(x) == 4


# --- training: stacks gathered on the device ---------------------------------------------------


def episode_first_rows(terminals: np.ndarray) -> np.ndarray:
    """For every row of a row-layout dataset, the first row of its episode (int32)."""
    terminals = np.asarray(terminals, bool)
    rows = np.arange(len(terminals))
    begins = np.concatenate([[True], terminals[:-1]]) if len(terminals) else np.zeros(0, bool)
    return np.maximum.accumulate(np.where(begins, rows, 0)).astype(np.int32)


def stacked_rows(x, rows, first_rows, frame_stack: int):
    """The images of `rows` with their K-1 predecessors in the same episode, on the channel axis
    (oldest first; rows near an episode's start repeat its first frame): (B, H, W, K*C)."""
    back = jnp.arange(frame_stack - 1, -1, -1)  # K-1, ..., 0 frames before the row
    frame_rows = jnp.maximum(rows[:, None] - back, first_rows[rows][:, None])  # (B, K)
    frames = x[frame_rows]  # (B, K, H, W, C)
    b, k, h, w, c = frames.shape
    return jnp.moveaxis(frames, 1, 3).reshape(b, h, w, k * c)


def gather_observations(observations, rows, first_rows, frame_stack: int):
    """Observations (an array or a pytree of arrays, rows first) at `rows`, images stacked when
    `frame_stack` > 1."""

    def leaf(x):
        if frame_stack > 1 and is_image(x):
            return stacked_rows(x, rows, first_rows, frame_stack)
        return x[rows]

    return jax.tree_util.tree_map(leaf, observations)


# --- acting: the last K frames of an episode, on the host -------------------------------------


class Frames:
    """The last K frames of an episode (or of a batch of episodes that start together), for acting.

        frames = Frames(3)
        frames.push(first_observation)          # the stack starts full of the first frame
        frames.push(observation)                # every executed step's observation
        policy_input = frames.stacked()         # images (..., H, W, 3*C), the state the latest
        frames.reset()                          # a new episode

    An observation is an image array (any leading axes) or a dict whose "image" (an array, or a dict
    of cameras) is stacked (its other entries are taken from the latest frame). A frame whose shape differs from the stack's
    (another batch size) starts the stack afresh rather than mixing episodes."""

    def __init__(self, frame_stack: int, first=None):
        self.frame_stack = int(frame_stack)
        self._frames: deque = deque(maxlen=self.frame_stack)
        if first is not None:
            self.push(first)

    def push(self, observation) -> None:
        if not self._frames or _image_shape(observation) != _image_shape(self._frames[-1]):
            self._frames.extend([observation] * self.frame_stack)
        else:
            self._frames.append(observation)

    def extend(self, observations) -> None:
        """Push a sequence of frames (e.g. the observations after each step of a chunk); only its
        last K can stay, so only those are pushed (no per-step work for K = 1, online's default)."""
        for ob in list(observations)[-self.frame_stack :]:
            self.push(ob)

    def reset(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def stacked(self):
        if not self._frames:
            raise ValueError("no frame yet: push the episode's first observation before stacking")
        latest = self._frames[-1]
        if self.frame_stack == 1:
            return latest
        if isinstance(latest, dict):  # the images stacked (every camera's), the state the latest
            stack = [f["image"] for f in self._frames]
            return {**latest, "image": jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], -1), *stack)}
        return np.concatenate([np.asarray(f) for f in self._frames], axis=-1)


def _image_shape(observation):
    images = observation["image"] if isinstance(observation, dict) else observation
    return jax.tree_util.tree_map(np.shape, images) if isinstance(images, dict) else np.shape(images)
