"""robomimic HDF5 files (`DIR/*.hdf5` with `data/demo_N/{actions, obs/<key>, rewards, dones}`), read
with h5py; see docs/robot-data.md.

The state is every non-image `obs/<key>` unless `--state-keys`, the cameras its uint8 image keys
unless `--cameras`; `--robomimic-filter` selects demos by `mask/<filter>`. Outcomes follow the
rewards (`lerobot.success_from_rewards`); `--no-include-failure` drops failed demos.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lps.data.lerobot import success_from_rewards
from lps.data.validate import DatasetError


def files(folder: Path) -> list[Path]:
    import h5py

    found = []
    for path in sorted(folder.glob("*.hdf5")) + sorted(folder.glob("*.h5")):
        try:
            with h5py.File(path, "r") as f:
                if "data" in f and any(k.startswith("demo") for k in f["data"].keys()):
                    found.append(path)
        except OSError:
            continue
    return found


def env_args(folder: Path) -> dict[str, Any]:
    """{file name: its `data` group's env_args (the JSON robomimic records to rebuild the
    simulator), parsed where it parses}: what a run on these files records beside its config."""
    import h5py

    out = {}
    for path in files(folder):
        with h5py.File(path, "r") as f:
            raw = f["data"].attrs.get("env_args", "")
        raw = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            out[path.name] = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            out[path.name] = raw
    return out


def read_dataset(folder: Path, state_keys: tuple[str, ...], cameras: tuple[str, ...], mask: str = "") -> dict[str, Any]:
    """{"cameras", "env_args", "episodes": [{index, state, action, images, success}]} of every
    robomimic file in `folder` (the demos of `mask/<mask>` when given)."""
    import h5py

    # First the outcomes, from the rewards of every demo of the files (a --robomimic-filter subset
    # does not change what rewards mean), then the arrays of the selected demos that are kept.
    every, peaks, demos, env_args = [], [], [], []
    for path in files(folder):
        with h5py.File(path, "r") as f:
            env_args.append(f["data"].attrs.get("env_args", ""))
            names = sorted(f["data"].keys(), key=lambda k: int(k.split("_")[-1]) if k.split("_")[-1].isdigit() else k)
            for name in names:
                demo = f["data"][name]
                rewards = np.asarray(demo["rewards"], np.float64).reshape(-1) if "rewards" in demo else np.zeros(0)
                rewards = rewards[~np.isnan(rewards)]
                every.append((path, name))
                peaks.append(float(rewards.max()) if len(rewards) else None)
            if mask:
                if f"mask/{mask}" not in f:
                    have = sorted(f["mask"].keys()) if "mask" in f else []
                    raise DatasetError(f"{path}: no filter mask/{mask}; filters there: {have}")
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f[f"mask/{mask}"][()]]
            demos += [(path, name) for name in names]
    if not demos:
        raise DatasetError(f"{folder}: no robomimic demos found")
    outcome = dict(zip(every, success_from_rewards(peaks)))
    episodes, cams = [], None
    for index, (path, name) in enumerate(demos):
        success = outcome.get((path, name), True)
        with h5py.File(path, "r") as f:
            demo = f["data"][name]
            where = f"{path} {name}"
            if "obs" not in demo or "actions" not in demo:
                raise DatasetError(f"{where}: lacks 'obs' or 'actions'")
            obs = demo["obs"]
            images = sorted(k for k in obs if obs[k].ndim == 4 and obs[k].dtype == np.uint8)
            use_cams = list(cameras) or images
            keys = list(state_keys) if state_keys else sorted(k for k in obs if k not in images)
            for k in use_cams + keys:
                if k not in obs:
                    raise DatasetError(f"{where}: no obs/{k}; obs keys there: {sorted(obs.keys())}")
            cams = cams or use_cams
            state = np.concatenate([np.asarray(obs[k], np.float32).reshape(len(obs[k]), -1) for k in keys], axis=1)
            episodes.append({"index": index, "state": state, "action": np.asarray(demo["actions"], np.float32),
                             "images": {c: np.asarray(obs[c]) for c in use_cams}, "success": success})  # fmt: skip
    if episodes and not cams:
        raise DatasetError(f"{folder}: robomimic demos without image observations; lps robot data needs at least one camera")
    return {"version": "robomimic", "cameras": cams or [], "env_args": env_args, "episodes": episodes}
