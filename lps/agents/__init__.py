"""Agent registry: `--agent NAME` -> (agent class, its config dataclass)."""

from __future__ import annotations

from lps.agents.base import Agent, Spec
from lps.agents.lps import LPS, LPSConfig

REGISTRY: dict[str, tuple[type, type]] = {
    LPS.name: (LPS, LPSConfig),
}


def check_agent(name: str) -> None:
    if name not in REGISTRY:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(sorted(REGISTRY))}")


def config_class(name: str) -> type:
    check_agent(name)
    return REGISTRY[name][1]


def make_agent(name: str, cfg, spec: Spec) -> Agent:
    check_agent(name)
    return REGISTRY[name][0](cfg, spec)


__all__ = ["Agent", "Spec", "REGISTRY", "check_agent", "config_class", "make_agent", "LPS", "LPSConfig"]
