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


def flatten(tree: dict, sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested maps as one map of `a<sep>b` keys (an empty map is a value, not a level)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, sep, name + sep))
        else:
            flat[name] = value
    return flat


def nest(flat: dict[str, Any], sep: str = "/") -> dict:
    """`flatten` undone: {"a/b": x} -> {"a": {"b": x}}."""
    out: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split(sep)
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
