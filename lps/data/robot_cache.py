"""The decoded-episode cache of a robot data folder: DIR/.lps-cache/robot-<options>-<content>.npz;
see docs/robot-data.md ("Cache").

An entry holds what `lps.data.robot.decode_folder` returns (not labelled rows), keyed by the
decoding options (`decode_options`) and a hash of every input file's bytes, memoised in
DIR/.lps-cache/hashes.json by (path, size, mtime, ctime, inode) so an edit is always seen.
Writing replaces only stale entries of the same options; reading checks an entry against itself
and rebuilds a damaged one. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lps.files import atomic_write, atomic_writer

CACHE_DIR = ".lps-cache"
HASHES_JSON = "hashes.json"
VERSION = 3
_BLOCK = 1 << 22


def entry_path(folder: Path, inputs: list[Path], options: dict[str, Any]) -> Path:
    """Where the entry for these input files and decoding options lives (it may not exist)."""
    options_key = _digest(json.dumps({**options, "version": VERSION}, sort_keys=True, default=str).encode())
    content = hashlib.blake2b(digest_size=8)
    for path, file_hash in zip(inputs, content_hashes(folder, inputs)):
        content.update(f"{path.relative_to(folder)}|{file_hash}\n".encode())
    return folder / CACHE_DIR / f"robot-{options_key}-{content.hexdigest()}.npz"


def content_hashes(folder: Path, paths: list[Path]) -> list[str]:
    """The blake2b hash of each file's bytes, read again only for files whose stat changed since
    the last call (the memo lives in the cache folder; an unwritable folder just memoises nothing)."""
    memo_path = folder / CACHE_DIR / HASHES_JSON
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    hashes, changed = [], False
    for path in paths:
        st = path.stat()
        stamp = f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
        key = str(path.relative_to(folder))
        known = memo.get(key)
        if not isinstance(known, list) or known[0] != stamp:
            known, changed = [stamp, _file_hash(path)], True
            memo[key] = known
        hashes.append(known[1])
    if changed:
        try:
            atomic_write(memo_path, json.dumps(memo))
        except OSError:
            pass
    return hashes


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _numbers_digest(decoded: dict[str, Any]) -> str:
    """A digest of the entry's numeric arrays and image shapes (images themselves are too large to
    hash on every load; a change to their rows shows in the shapes and the lengths)."""
    h = hashlib.blake2b(digest_size=16)
    for key in ("state", "action", "lengths", "success"):
        arr = np.ascontiguousarray(decoded[key])
        h.update(f"{key}{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    for cam, frames in sorted(decoded["images"].items()):
        h.update(f"{cam}{frames.shape}".encode())
    return h.hexdigest()


def write(path: Path, decoded: dict[str, Any]) -> None:
    """Uncompressed npz (images are uint8 already; compression would cost seconds on every load),
    streamed to a temporary file and renamed; then the same options' stale entries go."""
    arrays = {f"images/{cam}": frames for cam, frames in decoded["images"].items()}
    arrays.update({k: decoded[k] for k in ("state", "action", "lengths", "success")})
    meta = {"info": decoded["info"], "where": decoded["where"], "recorded": decoded["recorded"],
            "source": decoded["source"], "digest": _numbers_digest(decoded)}  # fmt: skip
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_writer(path) as f:
        np.savez(f, **arrays)
    options_prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(options_prefix + "*.npz"):
        if old != path:
            old.unlink(missing_ok=True)
    for legacy in path.parent.glob("robot-*.npz"):  # entries of CACHE_VERSION < 3 had one key
        if legacy.name.count("-") == 1:
            legacy.unlink(missing_ok=True)


def read(path: Path) -> dict[str, Any]:
    """The decoded dataset of an entry; ValueError/KeyError/OSError for one that cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:  # truncated or overwritten
        raise ValueError(f"{type(e).__name__}: {e}") from e
    missing = {"state", "action", "lengths", "success", "meta"} - set(arrays)
    if missing:
        raise KeyError(f"no {sorted(missing)} in the entry")
    meta = json.loads(str(arrays.pop("meta")))
    decoded = {k: v for k, v in arrays.items() if not k.startswith("images/")}
    decoded["images"] = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("images/")}
    rows = int(np.sum(decoded["lengths"]))
    for name, arr in [("state", decoded["state"]), ("action", decoded["action"]), *decoded["images"].items()]:
        if len(arr) != rows:
            raise ValueError(f"'{name}' has {len(arr)} rows but the episodes' lengths add up to {rows}")
    if len(decoded["success"]) != len(decoded["lengths"]) or len(meta["where"]) != len(decoded["lengths"]):
        raise ValueError("episode outcomes and lengths disagree")
    if _numbers_digest(decoded) != meta["digest"]:
        raise ValueError("its arrays do not match the digest written with them (edited after writing)")
    decoded["success"] = decoded["success"].astype(bool)
    decoded.update(info=meta["info"], where=meta["where"], recorded=meta["recorded"], source=meta["source"])
    return decoded


def size_bytes(folder: Path) -> int:
    """Bytes the cache folder of a dataset takes (what `lps data robot` reports)."""
    root = Path(folder) / CACHE_DIR
    return sum(p.stat().st_size for p in root.glob("*") if p.is_file()) if root.is_dir() else 0

