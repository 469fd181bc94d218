"""What a run's config resolves to, once, before anything is built: the kind of task, what it is
called, the environment it is evaluated and fine-tuned in, how rewards are labelled and where
its data comes from; see docs/training.md.

Setup, evaluation, validation, the online phase and the summary read this plan instead of
parsing `--env` and `--dataset` again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from lps.data import tasks, toy
from lps.data.tasks import Task

Kind = Literal["ogbench", "toy", "robot", "npz"]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    kind: Kind  # OGBench play data, a toy bandit, a folder of robot episodes, or an npz in the row layout
    name: str  # what the run trains on: the task, or the robot folder's name (run directories, summaries)
    env_id: str | None  # the environment it is evaluated and fine-tuned in (a toy: its name); None: none
    toy_env: bool  # that environment is a toy bandit (one-step episodes whose rows never bootstrap)
    sparse: bool  # online rows are labelled sparse (-1 per step until success), as the offline data
    task: Task | None  # the OGBench task (its play data and -val split), else None
    dataset: str | None  # --dataset: the robot folder or the npz file
    data_dir: Path  # where OGBench play data lives or is generated

    @property
    def is_robot(self) -> bool:
        """A folder of robot episodes: no environment to evaluate in (`lps eval RUN --dataset DIR`)."""
        return self.kind == "robot"

    @property
    def defaults_task(self) -> str:
        """The task whose per-task agent defaults apply (QC-FQL's alpha): none for a robot folder,
        whose data is no OGBench task whatever --env says."""
        return "" if self.is_robot else self.name


def resolve(cfg) -> RunPlan:
    """The plan of a `lps.training.config.TrainConfig`; an unknown task is refused here, naming the
    valid ones. An npz dataset keeps --env for its evaluation (none when --eval-episodes is 0)."""
    data_dir = Path(cfg.data_dir).expanduser() if cfg.data_dir else tasks.default_data_dir()
    if cfg.dataset is not None and Path(cfg.dataset).is_dir():
        return RunPlan("robot", Path(cfg.dataset).resolve().name, None, False, False, None, cfg.dataset, data_dir)
    if cfg.dataset is not None and not cfg.eval.episodes:
        return RunPlan("npz", cfg.env, None, False, False, None, cfg.dataset, data_dir)
    if toy.is_toy(cfg.env):
        toy.task_of(cfg.env)  # an unknown toy name fails here, with the valid ones
        kind = "npz" if cfg.dataset is not None else "toy"
        return RunPlan(kind, cfg.env, cfg.env, True, False, None, cfg.dataset, data_dir)
    task = tasks.parse_task(cfg.env, cfg.reward)
    kind = "npz" if cfg.dataset is not None else "ogbench"
    return RunPlan(kind, cfg.env, task.env_id, False, task.sparse, task, cfg.dataset, data_dir)
