"""Files the library writes and paths users give: the bottom layer, importable from anywhere
(docs/layout.md).

Every output (checkpoint, config, metrics, dataset, cache, episode) is written to a temporary file
beside its destination and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """An OSError raised in the block that names no file (a failed write or sync on a full disk)
    is raised again naming `path`, the file being written."""
    try:
        yield
    except OSError as e:
        if e.errno is not None and e.filename is None:
            raise OSError(e.errno, e.strerror, os.fspath(path)) from e
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike):
    """A binary file object whose contents replace `path` only if the block completes: written to a
    temporary file beside it, synced, then renamed (large outputs can stream into it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would; mkstemp's 0600 hides results from others
        with os.fdopen(fd, "w+b") as f:  # readable too: h5py writes through a file object that it also reads
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        with naming(path):
            raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_writer(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def user_path(path: str | os.PathLike | None, absolute: bool = False) -> str | None:
    """`~` expanded (and, with `absolute`, made absolute) the same way for every path a user gives."""
    if path is None:
        return None
    expanded = os.path.expanduser(os.fspath(path))
    return os.path.abspath(expanded) if absolute else expanded
