"""What every serving protocol of `lps serve` shares (lps's own, openpi's): the refusal of an
observation the policy could not act on, and JSON/msgpack-friendly copies. See docs/serving.md."""

from __future__ import annotations


class ActRefused(Exception):
    """The policy refused an observation or failed on it; the message is the client's to read."""


def plain(value):
    """JSON/msgpack-friendly copy (tuples to lists)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
