"""Reading and checking datasets, with errors that say what is wrong and what to do;
see docs/data.md ("Your own dataset").

A training dataset is a dict of row-layout arrays (see `lps.data.sampler`):
`observations` (N, obs_dim) (or uint8 images (N, H, W, C), or a {state, image} dict), `actions` (N, action_dim) in [-1, 1], `terminals` (N,) marking the
last row of every episode, `rewards` (N,), `masks` (N,).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Iterable

import numpy as np

ACTION_TOLERANCE = 1e-5


class DatasetError(ValueError):
    """A dataset file or array that cannot be trained on, with the reason and a fix."""


def read_npz(path: str | os.PathLike, required: Iterable[str]) -> dict[str, np.ndarray]:
    """Load every array of an npz file, checking that `required` keys are present."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path} holds a single array; a dataset is an .npz file of named arrays (see docs/data.md)")
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(
            f"dataset file {path} is corrupt or not an npz file ({type(e).__name__}: {e}); "
            "replace it (for generated OGBench data: delete it and run `lps data generate ENV`)"
        ) from e
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(f"dataset file {path} lacks key(s) {missing}; it has {sorted(arrays)}")
    return arrays


def validate(dataset: dict[str, np.ndarray], chunk_len: int, source: str = "dataset",
             images_beside: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """Check shapes, values and episode structure; return the dataset with canonical dtypes.
    `images_beside`: the observations checked here are the state part of image observations,
    which may be empty."""
    obs = dataset["observations"]
    if isinstance(obs, dict):  # {state, image}: check the leaves, then the rest as for arrays
        return {**validate({**dataset, "observations": obs["state"]}, chunk_len, source, images_beside=True),
                "observations": _validate_obs_dict(obs, len(dataset["actions"]), source)}  # fmt: skip
    if np.ndim(obs) == 4:  # images only (pixel tasks): check them, then the rest with an empty state
        images = _validate_images(obs, len(dataset["actions"]), source)
        empty = np.zeros((len(images), 0), np.float32)
        rest = validate({**dataset, "observations": empty}, chunk_len, source, images_beside=True)
        return {**rest, "observations": images}
    _check_numeric(dataset, source)
    _check_shapes(dataset, source, images_beside)
    _check_masks(np.asarray(dataset["masks"]), source)
    _check_finite(dataset, source)
    _check_terminals(np.asarray(dataset["terminals"]), source)
    _check_actions(dataset["actions"], source)
    terminals = np.asarray(dataset["terminals"]).astype(bool)
    if len(dataset["observations"]) == 0 or not terminals[-1]:
        raise DatasetError(f"{source}: the last row must end an episode (terminals[-1] = 1), or the dataset is empty")
    out = {
        "observations": dataset["observations"].astype(np.float32, copy=False),
        "actions": np.clip(dataset["actions"], -1.0, 1.0).astype(np.float32, copy=False),
        "terminals": terminals,
        "rewards": dataset["rewards"].astype(np.float32, copy=False),
        "masks": dataset["masks"].astype(np.float32, copy=False),
    }
    from lps.data.sampler import chunk_starts

    if len(chunk_starts(terminals, chunk_len)) == 0:
        raise DatasetError(f"{source}: no episode is longer than the chunk length {chunk_len}")
    return out


def _check_numeric(dataset: dict, source: str) -> None:
    for key in ("observations", "actions", "terminals", "rewards", "masks"):
        arr = np.asarray(dataset[key])
        if arr.ndim == 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise DatasetError(
                f"{source}: '{key}' must be a numeric array with one row per step, got {arr.dtype} {arr.shape}"
            )
        if np.iscomplexobj(arr):
            raise DatasetError(f"{source}: '{key}' holds complex numbers ({arr.dtype}); it must be real-valued")


def _check_shapes(dataset: dict, source: str, images_beside: bool) -> None:
    """(rows, dim) observations and actions, 1-D other keys, every key one row per step."""
    obs, actions = dataset["observations"], dataset["actions"]
    if obs.ndim != 2 or actions.ndim != 2:
        raise DatasetError(
            f"{source}: observations and actions must be 2-D (rows, dim), got {obs.shape} and {actions.shape}"
        )
    for key, arr in (("observations", obs), ("actions", actions)):
        if arr.shape[1] == 0 and not (key == "observations" and images_beside):
            raise DatasetError(
                f"{source}: '{key}' has width 0 (shape {arr.shape}); every row needs at least one {key[:-1]} value"
            )
    n = len(obs)
    for key in ("actions", "terminals", "rewards", "masks"):
        if len(dataset[key]) != n:
            raise DatasetError(f"{source}: '{key}' has {len(dataset[key])} rows but observations has {n}")
        if key != "actions" and dataset[key].ndim != 1:
            raise DatasetError(f"{source}: '{key}' must be 1-D, got shape {dataset[key].shape}")


def _check_masks(masks: np.ndarray, source: str) -> None:
    if masks.dtype == bool:
        return
    # Masks multiply over a chunk's steps: 3 would weigh the bootstrap by 3^H, -1 flip its sign.
    outside = ~((masks >= 0) & (masks <= 1))  # NaN is outside
    if outside.any():
        row = int(np.argwhere(outside)[0][0])
        raise DatasetError(
            f"{source}: 'masks' must lie in [0, 1] (1 = bootstrap from the next state's value, 0 = stop: "
            f"the episode truly ended there) but row {row} holds {float(masks[row]):g} "
            f"({int(outside.sum())} such rows); fix the data (an npz without 'masks' gets 1 on every row)"
        )


def _check_finite(dataset: dict, source: str) -> None:
    for key in ("observations", "actions", "rewards", "masks"):
        bad = ~np.isfinite(dataset[key])
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(
                f"{source}: '{key}' holds {int(bad.sum())} NaN/inf value(s), first at row {row}; clean the data"
            )
        # Training reads float32: a finite float64 beyond its range would become inf there.
        too_large = np.abs(dataset[key]) > np.finfo(np.float32).max
        if too_large.any():
            row = int(np.argwhere(too_large)[0][0])
            raise DatasetError(
                f"{source}: '{key}' holds {int(too_large.sum())} value(s) beyond float32's range "
                f"(|x| > {np.finfo(np.float32).max:.3g}), first at row {row}; rescale the data"
            )


def _check_terminals(raw_terminals: np.ndarray, source: str) -> None:
    if raw_terminals.dtype == bool:
        return
    not_binary = ~np.isin(raw_terminals, (0, 1))  # NaN is neither
    if not_binary.any():
        row = int(np.argwhere(not_binary)[0][0])
        raise DatasetError(
            f"{source}: 'terminals' must be 0 or 1 (1 on the last row of each episode) but row {row} holds "
            f"{raw_terminals[row]!r} ({int(not_binary.sum())} such rows)"
        )


def _check_actions(actions: np.ndarray, source: str) -> None:
    worst = float(np.max(np.abs(actions))) if actions.size else 0.0
    if worst > 1.0 + ACTION_TOLERANCE:
        raise DatasetError(
            f"{source}: actions must lie in [-1, 1] (the policy's range) but reach {worst:.4g}; "
            "rescale them to [-1, 1] before training"
        )


def _validate_obs_dict(obs: dict, n: int, source: str) -> dict:
    if set(obs) != {"state", "image"}:
        raise DatasetError(f"{source}: dict observations need the keys 'state' and 'image', got {sorted(obs)}")
    image = obs["image"]
    if isinstance(image, dict):  # robot cameras by name, each at its own size
        if not image:
            raise DatasetError(f"{source}: observation 'image' is an empty dict of cameras")
        image = {str(cam): _validate_images(frames, n, f"{source} camera '{cam}'") for cam, frames in image.items()}
    else:
        image = _validate_images(image, n, source)
    return {"state": np.asarray(obs["state"], np.float32), "image": image}


def _validate_images(images, n: int, source: str) -> np.ndarray:
    image = np.asarray(images)
    if image.dtype != np.uint8 or image.ndim != 4:
        raise DatasetError(f"{source}: observation images must be uint8 (N, H, W, C), got {image.dtype} {image.shape}")
    if len(image) != n:
        raise DatasetError(f"{source}: observation images have {len(image)} rows but actions have {n}")
    return image


def load_own_dataset(path: str | os.PathLike, chunk_len: int) -> dict[str, np.ndarray]:
    """A user's dataset in row layout; `masks` defaults to 1 (never stop bootstrapping)."""
    arrays = read_npz(path, ("observations", "actions", "terminals", "rewards"))
    arrays.setdefault("masks", np.ones(np.shape(arrays["rewards"]), np.float32))
    return validate(arrays, chunk_len, source=os.fspath(path))
