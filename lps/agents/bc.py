"""Behaviour cloning baselines: the generative base policies alone, no critic; see docs/agents.md.

- BC-FM: flow matching with Gaussian noise, sampled with 10 Euler steps.
- BC-MF: LPS's MeanFlow base policy (sphere noise, noise-to-action), sampled in one step.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lps.agents.base import Spec, batch_size, net_obs
from lps.nets import flows
from lps.nets.generative import BaseNetConfig, GenerativePolicy, Kind
from lps.nets.latent import Geometry


@dataclasses.dataclass(frozen=True)
class BCFMConfig(BaseNetConfig):
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Policy MLP widths."""
    flow_steps: int = 10
    """Euler steps when sampling."""
    geometry: Geometry = "normal"
    """Noise distribution."""


@dataclasses.dataclass(frozen=True)
class BCMFConfig(BaseNetConfig):
    base_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Policy MLP widths."""
    geometry: Geometry = "sphere"
    """Noise distribution."""
    parameterisation: flows.Parameterisation = "action"
    """MeanFlow output: the clean chunk (noise-to-action) or the average velocity."""


@dataclasses.dataclass(frozen=True)
class _BC:
    cfg: BCFMConfig | BCMFConfig
    spec: Spec

    kind: ClassVar[Kind]
    target_keys: ClassVar[tuple[str, ...]] = ()

    @property
    def policy(self) -> GenerativePolicy:
        return GenerativePolicy(
            self.cfg.base_hidden,
            self.spec.chunk_dim,
            self.kind,
            getattr(self.cfg, "flow_steps", 1),
            self.cfg.geometry,
            getattr(self.cfg, "parameterisation", "action"),
            dit=self.cfg.dit_spec(self.spec),
        )

    def init(self, key):
        return {"base": self.policy.init(key, self.spec.obs_dim)}

    def act(self, params, obs, key):
        return self.policy.sample(params["base"], net_obs(obs, "base"), self.policy.noise(key, batch_size(obs)))

    def bc_loss(self, params, obs, chunk, key):
        return self.policy.loss(params["base"], net_obs(obs, "base"), chunk, key)

    def loss(self, params, target_params, batch, key):
        bc_loss = self.bc_loss(params, batch["observations"], batch["actions"], key)
        return bc_loss, {"loss/bc": bc_loss}


@dataclasses.dataclass(frozen=True)
class BCFM(_BC):
    cfg: BCFMConfig
    name: ClassVar[str] = "bc-fm"
    summary: ClassVar[str] = "Flow-matching behaviour cloning, 10 Euler steps (Lipman et al. 2023)"
    key_fields: ClassVar[tuple[str, ...]] = ("flow_steps", "geometry", "base_hidden")
    kind: ClassVar[Kind] = "flow"


@dataclasses.dataclass(frozen=True)
class BCMF(_BC):
    cfg: BCMFConfig
    name: ClassVar[str] = "bc-mf"
    summary: ClassVar[str] = "MeanFlow behaviour cloning, one step (Geng et al. 2025; LPS's base policy alone)"
    key_fields: ClassVar[tuple[str, ...]] = ("geometry", "parameterisation", "base_hidden")
    kind: ClassVar[Kind] = "meanflow"
