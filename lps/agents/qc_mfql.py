"""QC-MFQL — QC-FQL with the flow-matching teacher replaced by a one-step MeanFlow policy
(Gaussian noise), as in MeanFlowQL; the one-step student and the Q loss are unchanged.

Its default alpha is QC-FQL's per-environment value. The LPS paper tuned QC-MFQL's alpha on its
own and did not publish the values, so that default is a starting point, not the paper's setting:
sweep alpha (docs/agents.md) to choose it."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lps.agents.qc_fql import QCFQL, QCFQLConfig
from lps.nets import flows
from lps.nets.critic import Aggregate
from lps.nets.generative import Kind


@dataclasses.dataclass(frozen=True)
class QCMFQLConfig(QCFQLConfig):
    alpha: float | None = None
    """Distillation weight; None: QC-FQL's per-environment value, borrowed. The paper tuned QC-MFQL's
    alpha separately and did not publish it: choose it with an alpha sweep."""
    parameterisation: flows.Parameterisation = "action"
    """MeanFlow teacher output: the clean chunk (noise-to-action) or the average velocity."""
    clip_critic_input: bool = False
    """As the public release: the critic scores the one-step policy's unclipped chunk in the actor
    loss (QC-FQL clips it; --clip-critic-input does here too)."""

    # Runs recorded before the field existed clipped, and resume so (lps.training.config.from_dict).
    LEGACY_DEFAULTS: ClassVar[dict] = {"clip_critic_input": True}


@dataclasses.dataclass(frozen=True)
class QCMFQL(QCFQL):
    cfg: QCMFQLConfig
    name: ClassVar[str] = "qc-mfql"
    summary: ClassVar[str] = "QC-FQL with a one-step MeanFlow teacher instead of 10-step flow matching"
    key_fields: ClassVar[tuple[str, ...]] = ("alpha", "critic_agg", "geometry", "parameterisation", "actor_hidden")
    notes: ClassVar[tuple[str, ...]] = (
        "alpha default is borrowed from QC-FQL's per-environment table: the LPS paper tuned QC-MFQL's "
        "alpha separately and did not publish the values, so choose it with an alpha sweep (docs/agents.md)",
        "critic_agg min, as in the public release",
        "the actor loss's critic scores the unclipped one-step chunk, as in the public release "
        "(--clip-critic-input clips it as QC-FQL does)",
    )
    teacher_kind: ClassVar[Kind] = "meanflow"

    @classmethod
    def default_critic_agg(cls, cfg) -> Aggregate:
        return "min"
