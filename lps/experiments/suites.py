"""Named sweeps that reproduce the paper's experiments with `lps sweep --suite NAME`
(`ogbench-state`: Table I; `ogbench-ablations`: the paper's section 5); see
docs/sweeps-and-reports.md.

Flags given with `--suite` override the suite's agents, tasks, seeds and out; arguments after
`--` are appended to the suite's train arguments (so `-- --steps 100000` shortens every run).
"""

from __future__ import annotations

import dataclasses

from lps.data.tasks import ENVS, parse_task
from lps.data.toy import is_toy

TASKS = tuple(f"{env}-play-singletask-task{i}-v0" for env in ENVS for i in range(1, 6))
# Table I's agents; `lpsd` (the appendix variant) is left out, add it with --agents.
TABLE_I_AGENTS = ("lps", "qc-fql", "qc-mfql", "dsrl-na", "cfgrl", "bc-fm", "bc-mf")


@dataclasses.dataclass(frozen=True)
class Suite:
    description: str
    agents: tuple[str, ...]
    variants: tuple[dict[str, str], ...] = ({},)
    """Config overrides, one run per variant (one factor at a time, not a grid)."""
    tasks: tuple[str, ...] = TASKS
    seeds: tuple[int, ...] = (0, 1, 2)
    train_args: tuple[str, ...] = ("--preset", "paper", "--reward", "paper")
    out: str = "runs/ogbench-state"


SUITES: dict[str, Suite] = {
    "ogbench-state": Suite("Table I: 5 envs x 5 tasks, LPS and the comparison set", TABLE_I_AGENTS),
    "ogbench-ablations": Suite(
        "LPS ablations: latent geometry, backbone, parameterisation",
        ("lps",),
        variants=(
            {},
            {"geometry": "normal"},
            {"geometry": "truncated"},
            {"backbone": "fm-10step"},
            {"backbone": "fm-1step"},
            {"parameterisation": "velocity"},
        ),
        out="runs/ogbench-ablations",
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        listing = "; ".join(f"{k} ({s.description})" for k, s in SUITES.items())
        raise ValueError(f"unknown suite {name!r}; suites: {listing}")
    return SUITES[name]


def envs_of(tasks) -> list[str]:
    """The OGBench environments (play datasets) that `tasks` train on, in order."""
    return list(dict.fromkeys(parse_task(t).env for t in tasks if not is_toy(t)))
