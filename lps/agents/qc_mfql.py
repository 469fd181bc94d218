"""QC-MFQL — QC-FQL with the flow-matching teacher replaced by a one-step MeanFlow policy
(Gaussian noise), as in MeanFlowQL; the one-step student and the Q loss are unchanged."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lps import flows
from lps.agents.qc_fql import QCFQL, QCFQLConfig
from lps.generative import Kind


@dataclasses.dataclass(frozen=True)
class QCMFQLConfig(QCFQLConfig):
    parameterisation: flows.Parameterisation = "action"
    """MeanFlow teacher output: the clean chunk (noise-to-action) or the average velocity."""


@dataclasses.dataclass(frozen=True)
class QCMFQL(QCFQL):
    cfg: QCMFQLConfig
    name: ClassVar[str] = "qc-mfql"
    summary: ClassVar[str] = "QC-FQL with a one-step MeanFlow teacher instead of 10-step flow matching"
    key_fields: ClassVar[tuple[str, ...]] = ("alpha", "geometry", "parameterisation", "actor_hidden")
    teacher_kind: ClassVar[Kind] = "meanflow"
