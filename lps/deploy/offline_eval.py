"""Offline evaluation on recorded episodes: how far the policy's chunks are from the actions a
demonstrator took (for robot data, where there is no simulator to roll out in); see docs/robot-data.md
("Offline evaluation").

The policy is queried where an open-loop controller would query it: at rows 0, H, 2H, ... of
every episode (each chunk must fit before the episode's final observation), and each predicted
chunk is compared with the H recorded actions from that row. Same policy seed -> same numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from lps.data.frames import episode_first_rows
from lps.data.normalize import apply_dataset
from lps.data.robot import load_folder
from lps.data.validate import load_own_dataset, validate
from lps.deploy.policy import load_policy
from lps.files import write_json
from lps.training.config import load_config


def chunk_rows(terminals: np.ndarray, chunk_len: int) -> np.ndarray:
    """Rows 0, H, 2H, ... of every episode whose chunk ends before the episode's last row."""
    ends = np.flatnonzero(terminals)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return np.concatenate([np.arange(s, e - chunk_len + 1, chunk_len) for s, e in zip(starts, ends)]).astype(int)


def action_error(policy, dataset: dict, batch_size: int = 256) -> dict[str, float]:
    """Mean squared / absolute error between predicted and recorded chunks, over every chunk,
    and the absolute error of the first action alone (what a closed-loop controller would use)."""
    spec = policy.spec
    rows = chunk_rows(np.asarray(dataset["terminals"], bool), spec.chunk_len)
    if len(rows) == 0:
        raise ValueError(f"no episode is longer than the chunk length {spec.chunk_len}")
    obs = dataset["observations"]
    stack = getattr(spec, "frame_stack", 1)
    first_rows = episode_first_rows(dataset["terminals"]) if stack > 1 else None

    def at(batch_rows):
        return jax.tree_util.tree_map(lambda v: v[batch_rows], obs)

    predicted = []
    for i in range(0, len(rows), batch_size):
        batch_rows = rows[i : i + batch_size]
        if stack > 1:  # the policy sees each row's last K frames of its episode, as in training
            frames = policy.new_frames()
            for back in range(stack - 1, 0, -1):
                policy.observe(at(np.maximum(batch_rows - back, first_rows[batch_rows])), frames=frames)
            chunk = policy(at(batch_rows), frames=frames)
        else:
            chunk = policy(at(batch_rows))
        predicted.append(np.asarray(chunk).reshape(len(batch_rows), spec.chunk_len, spec.action_dim))
    predicted = np.concatenate(predicted)
    recorded = np.asarray(dataset["actions"])[rows[:, None] + np.arange(spec.chunk_len)]
    error = predicted - recorded
    return {
        "offline/action_mse": float(np.mean(error**2)),
        "offline/action_mae": float(np.mean(np.abs(error))),
        "offline/first_action_mae": float(np.mean(np.abs(error[:, 0]))),
        "offline/chunks": float(len(rows)),
        "offline/episodes": float(np.sum(dataset["terminals"])),
    }


def evaluate_on_dataset(run_dir, dataset_path, seed: int | None = None, skip_bad: bool = False) -> dict[str, float]:
    """A run's policy against held-out recorded episodes (a robot folder, read with the run's
    loader options, bad episodes skipped with `skip_bad`, or a row-layout npz); the numbers are
    also written to the run's `offline-eval.json`."""
    _, cfg, _, spec = load_config(run_dir)
    policy = load_policy(run_dir, seed=cfg.seed if seed is None else seed)
    if Path(dataset_path).is_dir():
        # A normalised run is scored in its normalised units ([-1, 1] actions, like every other run):
        # the held-out rows get the run's stats and the policy skips its own mapping.
        robot = dataclasses.replace(cfg.robot, skip_bad=cfg.robot.skip_bad or skip_bad)
        raw = load_folder(dataset_path, robot, cfg.chunk_len, cfg.progress)
        data = validate(apply_dataset(raw, policy.normalization), cfg.chunk_len, str(dataset_path))
        policy.normalization = None
    else:
        data = load_own_dataset(dataset_path, cfg.chunk_len)
    if np.shape(data["actions"])[1] != spec.action_dim:
        raise ValueError(f"{dataset_path} has {np.shape(data['actions'])[1]}-D actions; the policy outputs {spec.action_dim}-D")
    result = action_error(policy, data)
    write_json(Path(run_dir) / "offline-eval.json", {"dataset": str(dataset_path), **result})
    return result
