"""What every serving protocol of `lps serve` shares (lps's own, openpi's, the learner's episodes):
the refusal of an observation the policy could not act on, JSON/msgpack-friendly copies, and nested
observation maps as flat `a<sep>b` keys and back. See docs/serving.md."""

from __future__ import annotations

from typing import Any


class ActRefused(Exception):
    """The policy refused an observation or failed on it; the message is the client's to read."""


def plain(value):
    """JSON/msgpack-friendly copy (tuples to lists)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def key_paths(tree: dict, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Each value of nested maps by its key path (an empty map is a value, not a level). Paths are
    tuples, so a key may hold any character (a camera named "cam.high")."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(key_paths(value, (*path, str(key))))
        else:
            out[(*path, str(key))] = value
    return out


def nest_paths(values: dict[tuple[str, ...], Any]) -> dict:
    """`key_paths` undone: {("a", "b"): x} -> {"a": {"b": x}}."""
    out: dict = {}
    for (*parents, leaf), value in values.items():
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def flatten(tree: dict, sep: str = "/") -> dict[str, Any]:
    """Nested maps as one map of `a<sep>b` keys (an empty map is a value, not a level)."""
    return {sep.join(path): value for path, value in key_paths(tree).items()}


def nest(flat: dict[str, Any], sep: str = "/") -> dict:
    """`flatten` undone: {"a/b": x} -> {"a": {"b": x}}."""
    return nest_paths({tuple(key.split(sep)): value for key, value in flat.items()})
