"""OGBench single-task names, the paper's reward protocol, and loading a task's dataset; see
docs/training.md ("Tasks and rewards").

Names: `<env>-play-singletask-task<N>-v0` (N = 1..5), `-sparse` after `play` for the sparse reward
`-(r != 0)`, `visual-` in front for the pixel twin. `reward='paper'` (the default) makes scene and
puzzle-3x3 sparse. Rewards are relabelled with `ogbench.relabel_utils` once per row of the raw file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np

from lps.data import generate as play_data  # its functions looked up at call time (tests replace them)
from lps.data.generate import DATA_ENVS, ENVS, VISUAL_ENVS, require_ogbench  # noqa: F401  (tasks.ENVS)
from lps.data.gym_env import make_gym_env
from lps.data.render import image_shape, is_visual, state_env
from lps.data.validate import DatasetError, read_npz, validate

SPARSE_IN_PAPER: tuple[str, ...] = ("scene", "puzzle-3x3")
RewardMode = Literal["paper", "dense", "sparse"]

_TASK = re.compile(
    r"^(?P<env>" + "|".join(map(re.escape, DATA_ENVS)) + r")-play(?P<sparse>-sparse)?-singletask(?:-task(?P<id>[1-5]))?-v0$"
)


def default_data_dir() -> Path:
    """OGBench's data directory, overridable with $OGBENCH_DATA_DIR (or --data-dir)."""
    return Path(os.environ.get("OGBENCH_DATA_DIR", "~/.ogbench/data")).expanduser()


@dataclasses.dataclass(frozen=True)
class Task:
    env: str
    task_id: int | None  # None: OGBench's default task
    sparse: bool

    @property
    def _suffix(self) -> str:
        return "" if self.task_id is None else f"-task{self.task_id}"

    @property
    def name(self) -> str:
        return f"{self.env}-play{'-sparse' if self.sparse else ''}-singletask{self._suffix}-v0"

    @property
    def env_id(self) -> str:
        """The gymnasium id of the evaluation environment."""
        return f"{self.env}-singletask{self._suffix}-v0"


def parse_task(name: str, reward: RewardMode = "paper") -> Task:
    m = _TASK.match(name)
    if m is None:
        raise ValueError(
            f"unknown task {name!r}; valid tasks are <env>-play[-sparse]-singletask-task<1..5>-v0 "
            f"with <env> one of {', '.join(DATA_ENVS)} (e.g. cube-single-play-singletask-task1-v0, "
            "visual-cube-single-play-singletask-task1-v0), "
            "or a toy task (toy-bandit, toy-<name>: see lps.data.toy)"
        )
    env, named_sparse = m["env"], m["sparse"] is not None
    if named_sparse and reward == "dense":
        raise ValueError(f"task {name!r} names sparse rewards but reward='dense' was asked for")
    sparse = named_sparse or reward == "sparse" or (reward == "paper" and state_env(env) in SPARSE_IN_PAPER)
    return Task(env, int(m["id"]) if m["id"] else None, sparse)


def relabel(task: Task, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Single-task rewards and masks for every raw row, by OGBench's own relabelling."""
    require_ogbench()
    from ogbench.relabel_utils import relabel_dataset

    # The state twin of a visual env has the same tasks and success test, and needs no renderer.
    env = make_gym_env(state_env(task.env_id))
    labels = {k: raw[k] for k in ("qpos", "button_states") if k in raw}
    relabel_dataset(task.env_id, env, labels)
    env.close()
    rewards, masks = labels["rewards"], labels["masks"]
    if task.sparse:
        rewards = -(rewards != 0).astype(np.float32)
    return rewards, masks


def ensure_generated(env: str, data_dir: Path, episodes: int, seed: int = 0, workers: int | None = None) -> Path:
    """The train file of `env`'s play data, generating it first if it is missing."""
    train_path, _ = play_data.dataset_paths(env, data_dir)
    if not train_path.exists():
        print(f"[lps] no {env} play data in {data_dir}: generating {episodes} episodes first")
        require_ogbench()
        play_data.generate(env, data_dir, episodes=episodes, seed=seed, workers=workers, overwrite=True)
    return train_path


def load_task(task: Task, data_dir: Path, chunk_len: int, episodes_if_missing: int = 1000, **generate_kwargs) -> dict:
    """A validated training dataset for `task`, generating the play data if it is missing."""
    path = ensure_generated(task.env, Path(data_dir), episodes_if_missing, **generate_kwargs)
    return load_task_file(task, path, chunk_len)


def load_task_file(task: Task, path: Path, chunk_len: int) -> dict:
    """One raw OGBench play-data file (train or `-val`) of `task`, relabelled and validated."""
    required = ["observations", "actions", "terminals", "qpos"]
    if task.env.startswith(("scene", "puzzle")):
        required.append("button_states")
    raw = read_npz(path, required)
    if is_visual(task.env):
        _check_images(raw["observations"], task, path)
    for key in ("qpos", "button_states"):
        if key in raw and len(raw[key]) != len(raw["observations"]):
            raise DatasetError(
                f"{path}: '{key}' has {len(raw[key])} rows but observations has {len(raw['observations'])}"
            )
        # Rewards are computed from these columns: a NaN here would become a silent wrong reward.
        if key in raw and np.issubdtype(raw[key].dtype, np.number) and not np.isfinite(raw[key]).all():
            bad = ~np.isfinite(raw[key])
            raise DatasetError(
                f"{path}: '{key}' holds {int(bad.sum())} NaN/inf value(s), first at row {int(np.argwhere(bad)[0][0])}; "
                f"the file is damaged: delete it and run `lps data generate {task.env}`"
            )
    raw["rewards"], raw["masks"] = relabel(task, raw)
    return validate(raw, chunk_len, source=str(path))


def _check_images(observations: np.ndarray, task: Task, path: Path) -> None:
    require_ogbench()
    expected = image_shape(task.env_id)
    if observations.dtype != np.uint8 or observations.shape[1:] != expected:
        raise DatasetError(
            f"{path}: {task.env} observations must be uint8 images {expected} (what the env renders), got "
            f"{observations.dtype} {observations.shape[1:]}; regenerate the data with `lps data generate {task.env}` "
            "(delete the old files first)"
        )
