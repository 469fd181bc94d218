"""Per-dimension normalisation of robot states and actions (`--normalize`), fitted on the training
data and stored in the run (`normalization.json`), so a deployed policy takes raw observations
and returns actions in the robot's own units; see docs/robot-data.md ("Units").

`auto` picks `quantile` when any dimension leaves [-1, 1], else none, and says why. Every mode is
an affine map `x_norm = (x - offset) / scale` (`minmax`, `meanstd` for states, `quantile`);
actions always take a range map into [-1, 1]. A constant dimension is named and only shifted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lps.data.validate import DatasetError
from lps.files import atomic_writer

MODES = ("auto", "none", "minmax", "meanstd", "quantile")
RANGE_TOLERANCE = 1e-5  # as lps.data.validate: actions within [-1, 1] up to float noise
STATS_JSON = "normalization.json"
QUANTILES = (0.01, 0.99)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"--normalize must be one of {', '.join(MODES)}; got {mode!r}")


def fit(values: np.ndarray, mode: str, name: str) -> dict[str, Any]:
    """{offset, scale, clip, constant} for (N, d) `values` under `mode` ('action' gets a range map)."""
    check_mode(mode)
    values = np.asarray(values, np.float64)
    if mode == "meanstd" and name != "action":
        offset, scale = values.mean(0), values.std(0)
    else:
        lo, hi = (np.quantile(values, QUANTILES, axis=0) if mode == "quantile" else (values.min(0), values.max(0)))
        offset, scale = (hi + lo) / 2, (hi - lo) / 2
    constant = np.flatnonzero(scale <= 1e-8 * np.maximum(1.0, np.abs(offset)))
    if len(constant):
        print(f"[lps] {name} dimension(s) {constant.tolist()} are constant in the data: not scaled (only shifted)")
        scale[constant] = 1.0
    return {"offset": offset.tolist(), "scale": scale.tolist(), "clip": mode == "quantile" or name == "action",
            "constant": constant.tolist()}  # fmt: skip


def apply(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    out = (np.asarray(x, np.float32) - np.asarray(stats["offset"], np.float32)) / np.asarray(stats["scale"], np.float32)
    return np.clip(out, -1.0, 1.0) if stats["clip"] else out


def invert(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    return np.asarray(x, np.float32) * np.asarray(stats["scale"], np.float32) + np.asarray(stats["offset"], np.float32)


def resolve_mode(data: dict[str, Any], mode: str) -> str:
    """`auto` -> quantile if any action or state dimension leaves [-1, 1], else none (printed with
    the reason); 'none' on such actions is refused, naming the flag; other modes pass through."""
    check_mode(mode)
    obs = data["observations"]
    columns = {"action": np.asarray(data["actions"])}
    if isinstance(obs, dict) and "state" in obs:
        columns["state"] = np.asarray(obs["state"])
    outside = {}
    for name, values in columns.items():
        worst = np.max(np.abs(values), axis=0) if len(values) else np.zeros(0)
        dims = np.flatnonzero(worst > 1.0 + RANGE_TOLERANCE)
        if len(dims):
            outside[name] = (int(dims[0]), float(worst[dims[0]]), len(dims))
    if mode == "none" and "action" in outside:
        dim, value, _ = outside["action"]
        raise DatasetError(f"actions must lie in [-1, 1] without normalisation, but action dimension {dim} reaches "
                         f"{value:.4g}; drop --normalize none (the default, auto, normalises such data), or "
                         "rescale the actions when recording")  # fmt: skip
    if mode != "auto":
        return mode
    if not outside:
        print("[lps] --normalize auto: every action and state dimension lies in [-1, 1]; no normalisation")
        return "none"
    reasons = ", ".join(f"{name} dimension {dim} reaches {value:.4g}" + (f" ({n} dims outside)" if n > 1 else "")
                        for name, (dim, value, n) in outside.items())  # fmt: skip
    print(f"[lps] --normalize auto: quantile statistics (q01/q99 -> [-1, 1]), since {reasons} (outside [-1, 1]; "
          "stored in the run, applied when serving)")  # fmt: skip
    return "quantile"


def fit_dataset(data: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """Stats of a row-layout robot dataset (observations {state, image}), or None for 'none'
    (`auto` is resolved on the data first)."""
    mode = resolve_mode(data, mode)
    if mode == "none":
        return None
    stats = {"mode": mode, "action": fit(data["actions"], mode, "action")}
    obs = data["observations"]
    if isinstance(obs, dict) and "state" in obs:
        stats["state"] = fit(obs["state"], mode, "state")
    return stats


def apply_dataset(data: dict[str, Any], stats: dict[str, Any] | None) -> dict[str, Any]:
    if stats is None:
        return data
    out = dict(data, actions=apply(data["actions"], stats["action"]))
    if "state" in stats:
        out["observations"] = dict(data["observations"], state=apply(data["observations"]["state"], stats["state"]))
    return out


def save(run_dir: str | Path, stats: dict[str, Any] | None) -> None:
    """Write (or, for 'none', remove) the run's stats; temp file then rename."""
    path = Path(run_dir) / STATS_JSON
    if stats is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        f.write(json.dumps(stats, indent=1).encode())


def load(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's stats, or None for a run trained without normalisation (and every older run)."""
    path = Path(run_dir) / STATS_JSON
    if not path.is_file():
        return None
    try:
        stats = json.loads(path.read_text())
        for part in ("action", "state"):
            if part in stats:
                stats[part]["offset"], stats[part]["scale"]  # noqa: B018 (shape check)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); retrain, or delete it to serve unnormalised (wrong units)") from e
    return stats


def prepare(data: dict[str, Any], mode: str, run_dirs: list[Path], stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit on the training data, store the stats in every run dir, return the normalised data.
    Given `stats` (a trained run's: its learner's offline data), apply those instead of fitting."""
    if stats is None:
        stats = fit_dataset(data, mode)
        for run_dir in run_dirs:
            save(run_dir, stats)
    return apply_dataset(data, stats)
