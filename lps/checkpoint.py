"""Atomic file writes and training checkpoints.

A checkpoint is the whole training state (parameters, target parameters, optimiser state, step
and RNG key) serialised with Flax's msgpack format. Everything is written to a temporary file in
the same directory and renamed into place, so a run killed mid-write leaves the previous
checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import serialization

CHECKPOINT = "checkpoint.msgpack"


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would; mkstemp's 0600 hides results from others
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save(run_dir: str | os.PathLike, state) -> Path:
    path = Path(run_dir) / CHECKPOINT
    atomic_write(path, serialization.to_bytes(state))
    return path


def restore(run_dir: str | os.PathLike, template):
    """The checkpoint of `run_dir`, as a state shaped like `template`."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {path.name})")
    try:
        restored = serialization.from_bytes(template, path.read_bytes())
    except Exception as e:  # msgpack raises several types for a damaged file
        raise ValueError(f"checkpoint {path} is damaged and cannot be read ({type(e).__name__}: {e})") from e
    for want, got in zip(jax.tree_util.tree_leaves(template), jax.tree_util.tree_leaves(restored)):
        if jnp.shape(want) != jnp.shape(got) or jnp.result_type(want) != jnp.result_type(got):
            raise ValueError(f"checkpoint {path} does not match this run's config (network sizes or data dims differ)")
    return restored
