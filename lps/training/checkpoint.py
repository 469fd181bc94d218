"""Training checkpoints (written atomically with `lps.files`); see docs/outputs.md.

A checkpoint is the whole training state (parameters, target parameters, optimiser state, step
and RNG key) serialised with Flax's msgpack format, behind a header holding the payload's
SHA-256, which is verified on load. Everything is written to a temporary file in the same
directory and renamed into place, so a run killed mid-write leaves the previous checkpoint intact
and never a half-written one. Saving moves the previous checkpoint to `checkpoint.prev.msgpack`,
the fallback when the latest one is damaged on disk.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import serialization

from lps.files import atomic_write

CHECKPOINT = "checkpoint.msgpack"
PREVIOUS = "checkpoint.prev.msgpack"  # the checkpoint before the latest: the fallback if that is damaged
MAGIC = b"LPSCKPT1"  # then the SHA-256 of the msgpack payload, then the payload


def _seal(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).digest() + payload


def _unseal(path: Path, blob: bytes) -> bytes:
    """The payload of a checkpoint file, verified against its checksum (ValueError if damaged).
    Files written before checksums existed (a bare msgpack map) are accepted unverified."""
    if blob.startswith(MAGIC):
        digest, payload = blob[len(MAGIC) : len(MAGIC) + 32], blob[len(MAGIC) + 32 :]
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError(f"checkpoint {path} is damaged (its checksum does not match its contents)")
        return payload
    if blob[:1] and (0x80 <= blob[0] <= 0x8F or blob[0] in (0xDE, 0xDF)):
        return blob  # an unsealed checkpoint of an older lps
    raise ValueError(f"checkpoint {path} is damaged (it does not start like a checkpoint)")


def verify(path: str | os.PathLike) -> bool:
    """Whether the checkpoint file at `path` exists and its checksum matches."""
    path = Path(path)
    try:
        _unseal(path, path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def save(run_dir: str | os.PathLike, state) -> Path:
    """Write the checkpoint, keeping the one before it (if intact) as the fallback."""
    path, previous = Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS
    # Host numpy arrays, whole: the file does not depend on how many devices held the state
    # (a sharded state is gathered by the caller on every process: lps.training.distributed.gather).
    payload = _seal(serialization.to_bytes(jax.device_get(state)))
    rotated = verify(path)  # a damaged latest one must not replace a good fallback
    if rotated:
        os.replace(path, previous)
    try:
        atomic_write(path, payload)
    except BaseException:
        if rotated and not path.exists():  # e.g. the disk is full: the last good one stays the latest
            os.replace(previous, path)
        raise
    return path


def _load(path: Path, template):
    try:
        payload = _unseal(path, path.read_bytes())
        _check_encoder_layout(path, template, payload)
        restored = serialization.from_bytes(template, payload)
    except ValueError as e:
        if str(e).startswith(f"checkpoint {path}"):
            raise
        raise ValueError(f"checkpoint {path} is damaged and cannot be read ({type(e).__name__}: {e})") from e
    except Exception as e:  # msgpack raises several types for a damaged file
        raise ValueError(f"checkpoint {path} is damaged and cannot be read ({type(e).__name__}: {e})") from e
    for want, got in zip(jax.tree_util.tree_leaves(template), jax.tree_util.tree_leaves(restored)):
        if jnp.shape(want) != jnp.shape(got) or jnp.result_type(want) != jnp.result_type(got):
            raise ValueError(f"checkpoint {path} does not match this run's config (network sizes or data dims differ)")
    return restored


def _check_encoder_layout(path: Path, template, payload: bytes) -> None:
    """A clear error for image runs saved before per-network encoders (one `params["encoder"]`
    with a LayerNorm in the IMPALA head): their parameters cannot be mapped onto today's networks."""
    params = getattr(template, "params", None)
    if not isinstance(params, dict) or not any(k.endswith("_encoder") for k in params):
        return
    try:
        saved = serialization.msgpack_restore(payload).get("params", {})
    except Exception:
        return  # damaged: from_bytes reports it
    if "encoder" in saved:
        raise ValueError(
            f"checkpoint {path} predates per-network image encoders and the IMPALA head without LayerNorm "
            "(one shared encoder with LayerNorm); it cannot be loaded by this version: retrain the run"
        )


def exists(run_dir: str | os.PathLike) -> bool:
    """Whether the run has any checkpoint (latest or previous) to resume from."""
    return (Path(run_dir) / CHECKPOINT).exists() or (Path(run_dir) / PREVIOUS).exists()


def restore(run_dir: str | os.PathLike, template):
    """The checkpoint of `run_dir`, as a state shaped like `template`. A damaged (or missing) latest
    checkpoint falls back to the previous one, saying so; if both are unusable, a ValueError names
    both problems."""
    path, previous = Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS
    if not exists(run_dir):
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {path.name})")
    if path.exists():
        try:
            return _load(path, template)
        except ValueError as e:
            if not previous.exists():
                raise
            problem = str(e)
    else:
        problem = f"checkpoint {path} is missing"
    try:
        restored = _load(previous, template)
    except ValueError as e:
        raise ValueError(f"{problem}; and the previous one is unusable too: {e}") from e
    step = getattr(restored, "step", None)
    step = getattr(getattr(restored, "train", None), "step", None) if step is None else step  # a learner's state
    at = f" (step {int(step)})" if step is not None else ""
    print(f"[lps] {problem}; using the previous checkpoint {previous.name}{at} instead", file=sys.stderr)
    return restored
