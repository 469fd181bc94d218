"""Agents: one file per method (its config, losses and acting rule), the registry `--agent NAME`
-> (agent class, its config dataclass), and `encoded`, the wrapper that runs any agent on image
observations. See docs/agents.md.

Imports: `lps.nets` and the base modules only; never `lps.data`, `lps.training` or above.
"""

from __future__ import annotations

import dataclasses

from lps.agents.base import Agent, Spec
from lps.agents.bc import BCFM, BCMF, BCFMConfig, BCMFConfig
from lps.agents.cfgrl import CFGRL, CFGRLConfig
from lps.agents.dsrl import DSRL, DSRLConfig
from lps.agents.lps import LPS, LPSConfig
from lps.agents.lpsd import LPSD, LPSDConfig
from lps.agents.qc_fql import QCFQL, QCFQLConfig
from lps.agents.qc_mfql import QCMFQL, QCMFQLConfig

REGISTRY: dict[str, tuple[type, type]] = {
    agent.name: (agent, config)
    for agent, config in [
        (LPS, LPSConfig),
        (LPSD, LPSDConfig),
        (QCFQL, QCFQLConfig),
        (QCMFQL, QCMFQLConfig),
        (DSRL, DSRLConfig),
        (CFGRL, CFGRLConfig),
        (BCFM, BCFMConfig),
        (BCMF, BCMFConfig),
    ]
}


def check_agent(name: str) -> None:
    if name not in REGISTRY:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(REGISTRY)}")


def config_class(name: str) -> type:
    check_agent(name)
    return REGISTRY[name][1]


def published_defaults(name: str, cfg):
    """Fill config fields whose default depends on the agent's other settings but not on the task:
    the critic's target aggregation (`critic_agg`), min or mean as the agent's source publishes it;
    with `release_actor`, the latent actor's widths as the public release builds them."""
    check_agent(name)
    agent_cls = REGISTRY[name][0]
    if getattr(cfg, "critic_agg", "") is None:
        cfg = dataclasses.replace(cfg, critic_agg=agent_cls.default_critic_agg(cfg))
    if getattr(cfg, "release_actor", False):  # the latent actor's widths as the public release builds them
        cfg = dataclasses.replace(cfg, actor_hidden=agent_cls.release_actor_hidden(cfg))
    return cfg


def resolve_config(name: str, cfg, env: str):
    """Fill config fields whose default depends on the task (e.g. QC-FQL's alpha) or on the agent
    (see `published_defaults`); the resolved config is what a run records in config.json."""
    cfg = published_defaults(name, cfg)
    agent_cls = REGISTRY[name][0]
    return agent_cls.resolve(cfg, env) if hasattr(agent_cls, "resolve") else cfg


def make_agent(name: str, cfg, spec: Spec) -> Agent:
    check_agent(name)
    agent_cls, cfg_cls = REGISTRY[name]
    if not isinstance(cfg, cfg_cls):
        raise TypeError(f"agent {name!r} needs a {cfg_cls.__name__}, got {type(cfg).__name__}")
    return agent_cls(published_defaults(name, cfg), spec)


__all__ = [
    "Agent",
    "Spec",
    "REGISTRY",
    "check_agent",
    "config_class",
    "make_agent",
    "published_defaults",
    "resolve_config",
] + [c.__name__ for pair in REGISTRY.values() for c in pair]
