"""Robot demonstrations in any known layout (DROID-style HDF5, LeRobot, robomimic, raw DROID) -> the
row layout the trainer reads; see docs/robot-data.md.

Each layout is a `Format` (detect, read) giving raw episodes; `decode_folder` checks them and makes
every camera RGB (at `--image-size` if set), cached by `lps.data.robot_cache`; `label` applies the
paper's semi-sparse rewards. Observations are `{"state", "image": {camera: frames}}`, cameras by
name; key names, cameras, image size and rewards are `RobotDataConfig` fields (flags of `lps
train` and `lps data robot`). At run time `droid_obs_to_lps(raw, cfg, cameras)` turns one robot
observation into what the policy was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from tqdm import tqdm

from lps.data import droid_raw, lerobot, normalize, robomimic, robot_cache
from lps.data.lerobot import IMAGE_PREFIX
from lps.data.normalize import check_mode
from lps.data.robot_cache import CACHE_DIR
from lps.data.validate import DatasetError, validate
from lps.files import atomic_writer, write_json

SUBFOLDERS = ("success", "failure")


@dataclasses.dataclass(frozen=True)
class RobotDataConfig:
    """How a folder of robot episodes (HDF5) becomes training data (used with --dataset DIR)."""

    action_keys: tuple[str, ...] = ("action/cartesian_velocity", "action/gripper_position")
    """HDF5 keys concatenated (in order) into the action; each (T, k) or (T,)."""
    state_keys: tuple[str, ...] = (
        "observation/robot_state/cartesian_position",
        "observation/robot_state/gripper_position",
    )
    """HDF5 keys concatenated (in order) into the proprioceptive state."""
    image_group: str = "observation/image"
    """HDF5 group holding one (T, H, W, C) uint8 array per camera."""
    cameras: tuple[str, ...] = ()
    """Camera keys inside --image-group, in stacking order (default: every key ending in --camera-suffix, sorted)."""
    camera_suffix: str = "_left"
    num_cameras: int = 2
    """Cameras every episode must have (an episode with another count is bad data)."""
    image_size: int = 0
    """Resize every camera image to this square size on load; 0 (default) keeps the recorded size, as
    the public release does (raw DROID's 1280x720 MP4s want e.g. --image-size 128)."""
    bgr: bool = True
    """Recorded images are BGR(A), as DROID's cameras write them; convert to RGB (alpha is dropped)."""
    step_reward: float = -1.0
    success_reward: float = 0.0
    """Reward at step T - H of a success episode."""
    failure_reward: float = -100.0
    """Reward at step T - H of a failure episode."""
    include_failure: bool = True
    """Also train on failure episodes (with --failure-reward), in every format: failure/ folders (HDF5,
    raw DROID), LeRobot episodes that failed (see --success-column), robomimic demos whose rewards never
    turn positive; --no-include-failure drops them."""
    skip_bad: bool = False
    """Skip episodes that fail validation (printing a summary) instead of stopping at the first."""
    cache: bool = True
    """Cache the decoded dataset in DIR/.lps-cache so the next run starts in seconds."""
    state_column: str = "observation.state"
    """LeRobot datasets: the table column holding the proprioceptive state."""
    action_column: str = "action"
    """LeRobot datasets: the table column holding the action."""
    success_column: str = ""
    """LeRobot datasets: the table column that says whether a step/episode succeeded (default: next.success
    when the table has it); an episode is a success iff the column is truthy at any step. Without one,
    next.reward decides: a success iff the episode's largest reward is > 0, unless no reward of the
    dataset is > 0 (e.g. -1/0 step rewards): then rewards say nothing and every episode is a success."""
    failure_episodes: tuple[int, ...] = ()
    """LeRobot datasets: episode indices that failed, whatever --success-column/next.success/next.reward say."""
    robomimic_filter: str = ""
    """robomimic files: read only the demos listed in mask/<this> (e.g. train); empty: every demo."""
    normalize: Literal["auto", "none", "minmax", "meanstd", "quantile"] = "auto"
    """auto|none|minmax|meanstd|quantile: per-dimension state/action stats fitted on the training data,
    stored in the run and applied by load_policy/serve. auto (default): quantile (q01/q99 -> [-1, 1])
    when any action or state dimension leaves [-1, 1] (physical units), else none; it says which."""

    def __post_init__(self):
        if self.num_cameras < 1:
            raise ValueError(f"--num-cameras must be at least 1, got {self.num_cameras}")
        if self.image_size < 0:
            raise ValueError(f"--image-size must be >= 0 (0 keeps the recorded size), got {self.image_size}")
        if self.cameras and len(self.cameras) != self.num_cameras:
            raise ValueError(
                f"--cameras names {len(self.cameras)} camera(s) {list(self.cameras)} but --num-cameras is "
                f"{self.num_cameras}; make them agree"
            )

        check_mode(self.normalize)
        if not self.action_keys or not self.state_keys:
            raise ValueError("--action-keys and --state-keys need at least one key each")


# --- one episode ------------------------------------------------------------------------------


def episode_paths(folder: str | os.PathLike) -> list[tuple[Path, bool]]:
    """(path, is_success) of every episode file, in a fixed order (success first, then failure)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"robot dataset folder not found: {folder}")
    found = []
    for sub in SUBFOLDERS:
        found += [(p, sub == "success") for p in sorted((folder / sub).glob("*.h5")) + sorted((folder / sub).glob("*.hdf5"))]
    if not found:
        raise DatasetError(
            f"{folder} holds no episodes: expected .h5 files in {folder / 'success'} (and optionally "
            f"{folder / 'failure'}); see docs/robot-data.md"
        )
    return found


def read_h5_episode(path: str | os.PathLike, cfg: RobotDataConfig = RobotDataConfig(),
                    success: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """One HDF5 episode file as raw arrays: {"state", "action", "images" {camera: (T, H, W, 3|4)
    as recorded}, "success", "bgr"}. `success` defaults to whether the file lies in a `success`
    folder. Bad data raises `DatasetError` naming the file and the key."""
    import h5py

    path = Path(path)
    if success is None:
        success = path.parent.name != "failure"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read as HDF5 ({e}); re-record or remove this episode") from e
    with f:
        arrays = {k: _column(_read(f, path, k), path, k) for k in cfg.action_keys + cfg.state_keys}
        cams = _camera_keys(f, path, cfg)
        frames = {c: _read(f, path, f"{cfg.image_group}/{c}") for c in cams}
    length = len(arrays[cfg.action_keys[0]])
    for key, arr in [*arrays.items(), *((f"{cfg.image_group}/{c}", a) for c, a in frames.items())]:
        if len(arr) == 0:
            raise DatasetError(f"{path}: empty episode ('{key}' has 0 steps)")
        if len(arr) != length:
            raise DatasetError(
                f"{path}: length mismatch: '{key}' has {len(arr)} steps but '{cfg.action_keys[0]}' has {length}"
            )
    for key in cfg.action_keys + cfg.state_keys:  # named by key here; decode_episode knows only the columns
        bad = ~np.isfinite(arrays[key])
        if bad.any():
            raise DatasetError(f"{path}: '{key}' holds NaN/inf at step {int(np.argwhere(bad)[0][0])}")
    return {"state": np.concatenate([arrays[k] for k in cfg.state_keys], axis=-1),
            "action": np.concatenate([arrays[k] for k in cfg.action_keys], axis=-1),
            "images": frames, "success": success, "bgr": cfg.bgr}  # fmt: skip


def read_episode(path: str | os.PathLike, cfg: RobotDataConfig = RobotDataConfig(), chunk_len: int = 5,
                 success: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """One HDF5 episode in the row layout: observations {state (T, ds) f32, image {camera: (T, H,
    W, 3) uint8 RGB}}, actions (T, da), rewards, masks, terminals (T,)."""
    decoded = decode_episode(read_h5_episode(path, cfg, success), cfg, str(path))
    return label(stack_episodes([decoded], f"{path}"), cfg, chunk_len)


def semi_sparse_labels(length: int, success: bool, chunk_len: int, cfg: RobotDataConfig = RobotDataConfig(),
                       failure_ends: bool = True) -> dict:  # fmt: skip
    """Rewards, masks and terminals of one episode of `length` steps (the paper's semi-sparse
    scheme, see the module docstring): the one labelling of robot episodes, offline and online.
    `failure_ends=False`: a failed episode was cut off, not ended (a time limit): -1 on every step
    and masks 1, so its last chunk bootstraps from the value of the state where it stopped."""
    rewards = np.full(length, cfg.step_reward, np.float32)
    masks = np.ones(length, np.float32)
    terminals = np.zeros(length, bool)
    terminals[-1] = True
    if not success and not failure_ends:
        return {"rewards": rewards, "masks": masks, "terminals": terminals}
    rewards[length - chunk_len] = cfg.success_reward if success else cfg.failure_reward
    masks[length - chunk_len :] = 0.0
    return {"rewards": rewards, "masks": masks, "terminals": terminals}


# --- one observation at run time --------------------------------------------------------------


def droid_obs_to_lps(raw: dict, cfg: RobotDataConfig = RobotDataConfig(), cameras: dict | None = None) -> dict:
    """One robot observation -> `{"state": (ds,) float32, "image": {camera: (H, W, 3) uint8 RGB}}`,
    exactly as training saw it. `raw` is the robot stack's dict (`{"robot_state": {...}, "image":
    {camera: BGRA}}`, optionally under an "observation" key, or with flat "a/b/c" keys), a
    LeRobot-style frame (`{"observation.state", "observation.images.<camera>"}`), or our own dict
    (`{"state", "image": {camera: RGB}}`). `cameras` ({name: {"shape", "channels", "order"}}, the
    run's `CAMERAS_JSON`) are matched by name: a missing or unknown camera, or frames with another
    channel count than recorded, are refused naming what the run expects."""
    if "state" in raw or "image" in raw and not isinstance(raw.get("image"), dict):
        if "state" not in raw or "image" not in raw:
            have, lack = ("state", "image") if "state" in raw else ("image", "state")
            raise ValueError(f"observation has '{have}' but no '{lack}'; this policy takes {{'state', 'image'}} "
                             f"(keys sent: {sorted(map(str, raw))})")  # fmt: skip
        group = raw["image"] if isinstance(raw["image"], dict) else {"image": raw["image"]}
        state = np.asarray(raw["state"], np.float32).reshape(-1)
        bgr, recorded = False, False  # our own dict: RGB at the trained size
    elif cfg.state_column in raw:  # a LeRobot-style frame
        group = {k.removeprefix(IMAGE_PREFIX): v for k, v in raw.items() if k.startswith(IMAGE_PREFIX)}
        state = np.asarray(raw[cfg.state_column], np.float32).reshape(-1)
        bgr, recorded = False, True
    else:
        state = np.concatenate([np.asarray(_lookup(raw, k), np.float32).reshape(-1) for k in cfg.state_keys])
        group = _lookup(raw, cfg.image_group)
        if not isinstance(group, dict):
            raise ValueError(f"observation '{cfg.image_group}' must be a dict of camera images, got {type(group).__name__}")
        if not cfg.cameras:  # DROID's stack sends every view ("<serial>_right" too); training read the suffixed ones
            group = {k: v for k, v in group.items() if str(k).endswith(cfg.camera_suffix)}
        bgr, recorded = cfg.bgr, True
    names = sorted(cameras) if cameras else list(cfg.cameras) or sorted(k for k in group if k.endswith(cfg.camera_suffix))
    missing, unknown = [c for c in names if c not in group], sorted(set(map(str, group)) - set(names))
    if not cameras and not cfg.cameras and len(names) != cfg.num_cameras:  # no names to match: the count at least
        raise ValueError(f"observation has camera(s) {sorted(map(str, group))}; the policy needs {cfg.num_cameras} "
                         f"(*{cfg.camera_suffix}; missing {cfg.num_cameras - len(names)})")  # fmt: skip
    if missing or unknown:
        raise ValueError(f"observation has camera(s) {sorted(map(str, group))}; this policy takes exactly {names}"
                         + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else ""))  # fmt: skip
    image = {}
    for name in names:
        frame = np.asarray(group[name])
        if frame.dtype != np.uint8 or frame.ndim != 3:
            raise ValueError(f"camera '{name}' must be one uint8 (H, W, C) frame, got {frame.dtype} {frame.shape}")
        want = (cameras or {}).get(name, {})
        channels = want.get("channels") if recorded else 3
        if channels and frame.shape[-1] != channels:
            order = want.get("order", "rgb").upper() + ("A" if channels == 4 else "")
            raise ValueError(f"camera '{name}' sends {frame.shape[-1]}-channel frames; this run was trained on "
                             f"{channels}-channel {order} frames from it (send them as recorded)")  # fmt: skip
        rgb = _to_rgb(frame[None], dataclasses.replace(cfg, bgr=bgr), resize=recorded)[0]
        if want.get("shape") and list(rgb.shape) != list(want["shape"]):
            raise ValueError(f"camera '{name}' gives {list(rgb.shape)} images; this run takes {list(want['shape'])} "
                             "(RGB, as its training data after --image-size)")  # fmt: skip
        image[name] = rgb
    return {"state": state, "image": image}


def _lookup(raw: dict, key: str):
    """`a/b/c` in a nested dict (or as a flat key), with or without its leading 'observation/'."""
    candidates = [key]
    if key.startswith("observation/"):
        candidates.append(key.removeprefix("observation/"))
    for cand in candidates:
        if cand in raw:
            return raw[cand]
        node = raw
        for part in cand.split("/"):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return node
    raise ValueError(f"observation lacks '{key}'; it has keys {sorted(raw)}")


def _read(f, path: Path, key: str) -> np.ndarray:
    if key not in f:
        raise DatasetError(f"{path}: missing key '{key}' (set the key names with --action-keys/--state-keys/--cameras)")
    node = f[key]
    if not hasattr(node, "shape"):
        raise DatasetError(f"{path}: '{key}' is a group, not an array")
    return node[()]


def _column(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DatasetError(f"{path}: '{key}' must be numeric (T,) or (T, k), got {arr.dtype} {arr.shape}")
    return arr.astype(np.float32)


def _camera_keys(f, path: Path, cfg: RobotDataConfig) -> list[str]:
    if cfg.image_group not in f:
        raise DatasetError(f"{path}: missing key '{cfg.image_group}' (the camera group; see --image-group)")
    available = sorted(f[cfg.image_group].keys())
    if cfg.cameras:
        for cam in cfg.cameras:
            if cam not in available:
                raise DatasetError(f"{path}: missing key '{cfg.image_group}/{cam}'; cameras there: {available}")
        return list(cfg.cameras)
    cams = [k for k in available if k.endswith(cfg.camera_suffix)]
    if len(cams) != cfg.num_cameras:
        raise DatasetError(
            f"{path}: wrong camera count under '{cfg.image_group}': found {len(cams)} ({cams}) ending in "
            f"'{cfg.camera_suffix}', expected {cfg.num_cameras} (see --num-cameras, --cameras)"
        )
    return cams


def _to_rgb(frames: np.ndarray, cfg: RobotDataConfig, resize: bool = True) -> np.ndarray:
    """(T, H, W, 3|4) -> (T, H', W', 3) uint8 RGB, resized to `cfg.image_size` (bilinear) if set."""
    rgb = frames[..., :3]
    if cfg.bgr:
        rgb = rgb[..., ::-1]
    size = cfg.image_size
    if resize and size and rgb.shape[1:3] != (size, size):
        from PIL import Image

        rgb = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((size, size), Image.BILINEAR)) for x in rgb])
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# --- formats: every layout read to raw episodes -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Format:
    """A robot data layout: `detect(folder)` says whether a folder holds it; `read(folder, cfg,
    progress)` gives {"version", "episodes": [{state, action, images {camera: frames}, success,
    bgr?, where?}]} of every episode; `inputs(folder, cfg)` lists the files the episodes come from."""

    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, RobotDataConfig, bool], dict[str, Any]]
    inputs: Callable[[Path, RobotDataConfig], list[Path]]


def _every_file(folder: Path, cfg: RobotDataConfig) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and CACHE_DIR not in p.parts)


def _read_h5_folder(folder: Path, cfg: RobotDataConfig, progress: bool) -> dict[str, Any]:
    paths = episode_paths(folder)
    episodes = []
    for path, success in tqdm(paths, desc="reading episodes", unit="ep", disable=not progress, dynamic_ncols=True):
        try:
            episodes.append({**read_h5_episode(path, cfg, success), "where": str(path)})
        except DatasetError as e:
            episodes.append({"error": e, "where": str(path)})
    return {"version": "HDF5 episodes", "episodes": episodes}


def _read_lerobot(folder: Path, cfg: RobotDataConfig, progress: bool) -> dict[str, Any]:
    print(lerobot.estimate(folder, cfg.cameras))
    return lerobot.read_dataset(folder, cfg.state_column, cfg.action_column, cfg.cameras, cfg.failure_episodes,
                                cfg.success_column)  # fmt: skip


def _read_robomimic(folder: Path, cfg: RobotDataConfig, progress: bool) -> dict[str, Any]:
    state_keys = () if cfg.state_keys == RobotDataConfig.state_keys else cfg.state_keys
    return robomimic.read_dataset(folder, state_keys, cfg.cameras, cfg.robomimic_filter)


def _read_droid_raw(folder: Path, cfg: RobotDataConfig, progress: bool) -> dict[str, Any]:
    return droid_raw.read_dataset(folder, cfg.action_keys, cfg.state_keys, cfg.cameras)


def _formats() -> tuple[Format, ...]:
    def h5_inputs(folder: Path, cfg: RobotDataConfig) -> list[Path]:
        return [p for p, _ in episode_paths(folder)]

    return (
        Format("LeRobot", lerobot.is_lerobot, _read_lerobot, _every_file),
        Format("robomimic", lambda d: not (d / "success").is_dir() and bool(robomimic.files(d)), _read_robomimic, _every_file),
        Format("raw DROID", lambda d: bool(droid_raw.trajectories(d)), _read_droid_raw, _every_file),
        Format("HDF5 episodes", lambda d: any((d / sub).is_dir() for sub in SUBFOLDERS), _read_h5_folder, h5_inputs),
    )  # fmt: skip


def detect_format(folder: str | os.PathLike) -> Format:
    """The layout of a robot data folder (the first of `_formats()` that recognises it)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "not found"
        raise DatasetError(f"robot dataset folder {what}: {folder}")
    for fmt in _formats():
        if fmt.detect(folder):
            return fmt
    raise DatasetError(
        f"{folder} holds no episodes in a known robot data layout. Known layouts: LeRobot v2.1/v3.0 "
        "(meta/info.json), robomimic (*.hdf5 with data/demo_N), raw DROID (success/<date>/<time>/trajectory.h5 + "
        "recordings/MP4), HDF5 episodes (success/*.h5, failure/*.h5); see docs/robot-data.md"
    )


# --- decoding: raw episodes -> checked RGB arrays (what the cache holds) ----------------------


def decode_episode(raw: dict[str, Any], cfg: RobotDataConfig, where: str) -> dict[str, Any]:
    """One raw episode checked (lengths, finite values, uint8 frames) and its frames made RGB at
    --image-size: {"state", "action", "images" {camera: (T, H, W, 3)}, "success", "recorded"
    {camera: {"channels", "order"}}}."""
    state, action = np.asarray(raw["state"], np.float32), np.asarray(raw["action"], np.float32)
    length = len(action)
    if length == 0:
        raise DatasetError(f"{where}: empty episode (0 steps)")
    for name, arr in [("state", state), ("action", action)] + [(f"camera '{c}'", f) for c, f in raw["images"].items()]:
        if len(arr) != length:
            raise DatasetError(f"{where}: {name} has {len(arr)} steps but the action has {length}")
    for name, arr in (("state", state), ("action", action)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DatasetError(f"{where}: {name} holds NaN/inf at step {int(np.argwhere(bad)[0][0])}")
    bgr = bool(raw.get("bgr", False))
    images, recorded = {}, {}
    for cam, frames in raw["images"].items():
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (3, 4):
            raise DatasetError(f"{where}: camera '{cam}' must be uint8 (T, H, W, 3 or 4), got {frames.dtype} {frames.shape}")
        images[str(cam)] = _to_rgb(frames, dataclasses.replace(cfg, bgr=bgr))
        recorded[str(cam)] = {"channels": int(frames.shape[-1]), "order": "bgr" if bgr else "rgb"}
    return {"state": state, "action": action, "images": images, "success": bool(raw["success"]), "recorded": recorded}


def stack_episodes(episodes: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """Decoded episodes as one "decoded dataset": rows concatenated, with each episode's length,
    outcome and name: {"state", "action", "images", "lengths", "success", "where", "recorded"}."""
    cams = sorted(episodes[0]["images"])
    for ep in episodes:
        if sorted(ep["images"]) != cams:
            raise DatasetError(f"{ep.get('where', source)}: cameras {sorted(ep['images'])}, but other episodes have {cams}")
    for cam in cams:
        shapes = {ep["images"][cam].shape[1:] for ep in episodes}
        if len(shapes) > 1:
            raise DatasetError(f"{source}: camera '{cam}' has different image sizes across episodes {sorted(shapes)}; "
                               "set --image-size to resize them alike")  # fmt: skip
    return {
        "state": np.concatenate([ep["state"] for ep in episodes]),
        "action": np.concatenate([ep["action"] for ep in episodes]),
        "images": {cam: np.concatenate([ep["images"][cam] for ep in episodes]) for cam in cams},
        "lengths": np.array([len(ep["action"]) for ep in episodes], np.int64),
        "success": np.array([ep["success"] for ep in episodes], bool),
        "where": [ep.get("where", source) for ep in episodes],
        "recorded": episodes[0]["recorded"],
        "source": source,
    }


def decode_folder(folder: str | os.PathLike, cfg: RobotDataConfig = RobotDataConfig(),
                  progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Every episode of a robot data folder (any known layout), decoded and checked, from the
    cache (`lps.data.robot_cache`) when the files' contents and the decoding options are those it
    was written for. Bad episodes stop the load (naming file and key), or with --skip-bad are
    skipped and listed."""
    folder = Path(folder)
    fmt = detect_format(folder)  # every episode is read: `label` leaves failures out (--no-include-failure)
    inputs = fmt.inputs(folder, cfg)
    entry = robot_cache.entry_path(folder, inputs, decode_options(cfg)) if cfg.cache else None
    if entry is not None and entry.exists():
        try:
            decoded = robot_cache.read(entry)
            print(f"[lps] robot data from cache {entry} ({decoded['info']})")
            return decoded
        except (OSError, ValueError, KeyError) as e:  # damaged or inconsistent: rebuilt, never trusted
            print(f"[lps] ignoring the cache {entry} ({type(e).__name__}: {e}); reading the episodes again")
    raw = fmt.read(folder, cfg, progress)
    episodes, skipped = [], []
    for i, ep in enumerate(raw["episodes"]):
        where = ep.get("where") or f"{folder} episode {ep.get('index', i)}"
        try:
            if "error" in ep:
                raise ep["error"]
            episodes.append({**decode_episode(ep, cfg, where), "where": where})
        except DatasetError as e:
            if not cfg.skip_bad:
                raise DatasetError(f"{e}\n(pass --skip-bad to skip bad episodes with a summary instead)") from None
            skipped.append(str(e))
    _report_skipped(skipped, len(raw["episodes"]))
    if not episodes:
        raise DatasetError(f"{folder}: every episode was bad; nothing to train on")
    decoded = stack_episodes(episodes, str(folder))
    n_success = int(decoded["success"].sum())
    cams = ", ".join(f"{c} {v.shape[1:]}" for c, v in decoded["images"].items())
    decoded["info"] = (f"{raw['version']}, {len(episodes)} episodes ({n_success} success, {len(episodes) - n_success} "
                       f"failure), {len(decoded['action'])} steps, cameras {cams}")  # fmt: skip
    print(f"[lps] robot data: {decoded['info']}")
    if entry is not None:
        try:
            robot_cache.write(entry, decoded)
        except OSError as e:  # e.g. a read-only dataset folder: train anyway, just without the cache
            print(f"[lps] could not write the cache {entry} ({e}); the next run will read the episodes again")
    return decoded


def decode_options(cfg: RobotDataConfig) -> dict[str, Any]:
    """The options that change decoded episodes (not the rewards, chunk length, normalisation or
    --include-failure, applied after the cache: `lps data robot` and `lps train --preset robot`
    share it)."""
    labelling = {"step_reward", "success_reward", "failure_reward", "normalize", "cache", "include_failure"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in labelling}


def _report_skipped(skipped: list[str], total: int) -> None:
    if skipped:
        print(f"[lps] skipped {len(skipped)} of {total} episode(s) (--skip-bad):")
        for reason in skipped:
            print(f"  - {reason}")


def label(decoded: dict[str, Any], cfg: RobotDataConfig, chunk_len: int) -> dict[str, Any]:
    """A decoded dataset in the row layout with the paper's semi-sparse rewards for `chunk_len`:
    observations {"state", "image": {camera: frames}}, actions, rewards, masks, terminals. An
    episode no longer than the chunk stops the load (or is skipped with --skip-bad); failures are
    left out with --no-include-failure."""
    lengths = decoded["lengths"]
    keep = decoded["success"] | cfg.include_failure
    _check_kept(decoded["source"], len(lengths), int(keep.sum()))
    if not keep.all():
        print(f"[lps] left out {int((~keep).sum())} failure episode(s) (--no-include-failure; --include-failure keeps them)")
    short = np.flatnonzero((lengths <= chunk_len) & keep)
    if len(short):
        reasons = [f"{decoded['where'][i]}: episode has {lengths[i]} steps; it needs more than the chunk length "
                   f"{chunk_len}" for i in short]  # fmt: skip
        if not cfg.skip_bad:
            raise DatasetError(f"{reasons[0]}\n(pass --skip-bad to skip bad episodes with a summary instead)")
        _report_skipped(reasons, int(keep.sum()))
        keep[short] = False
        if not keep.any():
            raise DatasetError(f"{decoded['source']}: every episode was bad; nothing to train on")
    labels = [semi_sparse_labels(int(n), bool(ok), chunk_len, cfg) for n, ok in zip(lengths[keep], decoded["success"][keep])]
    rows = np.repeat(keep, lengths) if not keep.all() else slice(None)
    return {
        "observations": {"state": decoded["state"][rows],
                         "image": {cam: frames[rows] for cam, frames in decoded["images"].items()}},
        "actions": decoded["action"][rows],
        **{k: np.concatenate([lab[k] for lab in labels]) for k in ("rewards", "masks", "terminals")},
    }  # fmt: skip


def load_folder(folder: str | os.PathLike, cfg: RobotDataConfig = RobotDataConfig(), chunk_len: int = 5,
                progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Every episode of a robot data folder in the row layout (see `decode_folder`, `label`)."""
    return label(decode_folder(folder, cfg, progress), cfg, chunk_len)


def load_for_training(folder: str | os.PathLike, cfg: RobotDataConfig, chunk_len: int, progress: bool,
                      run_dirs: list[Path], stats: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """`load_folder`, normalised (`cfg.normalize`, see `lps.data.normalize`) with stats fitted on
    it, which are stored in each run dir (or removed there for 'none'), then validated: the data a
    robot run trains on. Given `stats` (a trained run's), those are applied and nothing is stored.
    Each run dir also gets CAMERAS_JSON: how each camera was recorded (what the server checks)."""
    decoded = decode_folder(folder, cfg, progress)
    data = normalize.prepare(label(decoded, cfg, chunk_len), cfg.normalize, run_dirs, stats)
    cameras = {cam: {**decoded["recorded"].get(cam, {}), "shape": list(frames.shape[1:])}
               for cam, frames in decoded["images"].items()}  # fmt: skip
    for run_dir in run_dirs:
        write_json(Path(run_dir) / CAMERAS_JSON, cameras)
    _record_source(Path(folder), run_dirs)
    return validate(data, chunk_len, str(folder))


CAMERAS_JSON = "cameras.json"  # beside config.json: {camera: {"shape", "channels", "order"}} as recorded
DATASET_JSON = "dataset.json"  # beside config.json: what the run's dataset says of itself


def read_cameras(run_dir: str | Path) -> dict[str, dict] | None:
    """A robot run's CAMERAS_JSON (None for runs made before cameras had names)."""

    path = Path(run_dir) / CAMERAS_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); retrain the run, or restore the file") from e


def _record_source(folder: Path, run_dirs: list[Path]) -> None:
    """robomimic files carry `env_args` (how to rebuild their simulator, e.g. to evaluate the
    policy there): the run keeps them in DATASET_JSON."""
    if (folder / "success").is_dir() or not folder.is_dir() or not robomimic.files(folder):
        return
    record = {"format": "robomimic", "folder": str(folder), "env_args": robomimic.env_args(folder)}
    for run_dir in run_dirs:
        write_json(Path(run_dir) / DATASET_JSON, record)


def _check_kept(folder: str | os.PathLike, found: int, kept: int) -> None:
    """Every one of the `found` episodes was a failure and --no-include-failure left none: say so."""
    if found and not kept:
        raise DatasetError(
            f"{folder}: all {found} episode(s) are failures and failures are left out (--no-include-failure, "
            "the robot preset's default); pass --include-failure to train on them"
        )


def summary(data: dict[str, Any], cfg: RobotDataConfig, chunk_len: int) -> str:
    """What `lps data robot DIR` prints: steps, episodes, outcomes, cameras, per-dimension ranges."""
    obs, actions = data["observations"], data["actions"]
    ends = np.flatnonzero(data["terminals"])
    outcome_rows = ends - chunk_len + 1
    failures = int(np.sum(data["rewards"][outcome_rows] == cfg.failure_reward))
    cams = ", ".join(f"'{c}' {v.shape[1:]}" for c, v in obs["image"].items())
    lines = [f"[lps] {len(ends)} episodes ({len(ends) - failures} success, {failures} failure), {len(actions)} steps",
             f"[lps] cameras (uint8 RGB, each its own encoder): {cams}"]  # fmt: skip
    for name, arr in (("state", obs["state"]), ("actions", actions)):
        lo, hi = arr.min(0), arr.max(0)
        fmt = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v) + "]"  # noqa: E731
        lines.append(f"[lps] {name} {arr.shape[1:]}: min {fmt(lo)} max {fmt(hi)}")
        constant = np.flatnonzero(hi - lo <= 1e-8).tolist()
        if constant:
            lines.append(f"[lps]   {name} dimension(s) {constant} are constant (normalisation leaves them unscaled)")
    return "\n".join(lines)


def append_episodes(dataset: dict[str, Any] | None, episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The row-layout dataset with `episodes` (each as `read_episode` returns it) appended: the one
    way episodes join a dataset, whether read from disk or collected online."""
    import jax

    parts = ([dataset] if dataset is not None else []) + list(episodes)
    if not parts:
        raise ValueError("append_episodes needs at least one episode")
    for i, ep in enumerate(parts):
        if not np.asarray(ep["terminals"])[-1]:
            raise DatasetError(f"episode {i} does not end with a terminal row (terminals[-1] must be 1)")
    out = {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in ("actions", "rewards", "masks", "terminals")}
    out["observations"] = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *[p["observations"] for p in parts])
    return out


# --- writing episodes (recording, the learner) -------------------------------------------------


def write_episode(path: str | os.PathLike, actions: np.ndarray, state: np.ndarray, images: dict[str, np.ndarray],
                  cfg: RobotDataConfig = RobotDataConfig()) -> None:  # fmt: skip
    """Write one episode in the layout `read_episode` reads: `actions` (T, 7) split into
    cartesian velocity and gripper, `state` (T, 7) likewise, `images` {camera: (T, H, W, 4) BGRA}.
    Written to a temporary file and renamed, so a reader never sees half an episode."""
    import h5py

    with atomic_writer(path) as file, h5py.File(file, "w") as f:
        for keys, arr in ((cfg.action_keys, actions), (cfg.state_keys, state)):
            f[keys[0]] = arr[:, :-1]
            f[keys[1]] = arr[:, -1]
        for cam, frames in images.items():
            f[f"{cfg.image_group}/{cam}"] = frames


@dataclasses.dataclass(frozen=True)
class EpisodeLayout:
    """How one HDF5 folder's episodes hold their columns: (key, width, 1-D?) of every action and
    state key, in order, and the camera names; read from one of its files (`layout_of`)."""

    action: tuple[tuple[str, int, bool], ...]
    state: tuple[tuple[str, int, bool], ...]
    cameras: tuple[str, ...]


def layout_of(folder: str | os.PathLike, cfg: RobotDataConfig) -> EpisodeLayout:
    """The layout of the first episode of an HDF5 robot folder (DatasetError if it has none)."""
    import h5py

    path = episode_paths(folder)[0][0]
    with h5py.File(path, "r") as f:
        def columns(keys):
            shapes = [f[k].shape for k in keys if k in f]
            if len(shapes) != len(keys):
                raise DatasetError(f"{path}: lacks one of {list(keys)}")
            return tuple((k, 1 if len(s) == 1 else int(s[1]), len(s) == 1) for k, s in zip(keys, shapes))

        return EpisodeLayout(columns(cfg.action_keys), columns(cfg.state_keys), tuple(_camera_keys(f, path, cfg)))


def write_rows_episode(path: str | os.PathLike, layout: EpisodeLayout, state: np.ndarray, actions: np.ndarray,
                       image: dict[str, np.ndarray], cfg: RobotDataConfig, extra: dict[str, np.ndarray] | None = None,
                       attrs: dict[str, str] | None = None) -> None:  # fmt: skip
    """An episode in the row layout (state (T, ds), actions (T, da), image {camera: (T, H, W, 3)
    RGB}) written back in its folder's own HDF5 layout, so `read_episode` reads what was written:
    columns split by the layout's keys, each camera's frames under its name (BGR when the folder's
    are). `extra` arrays go under `lps/`, `attrs` on the file. Temporary file, then rename."""
    import h5py

    widths = [w for _, w, _ in layout.action], [w for _, w, _ in layout.state]
    if sum(widths[0]) != actions.shape[1] or sum(widths[1]) != state.shape[1] or sorted(image) != sorted(layout.cameras):
        raise ValueError(f"the episode's columns (actions {actions.shape[1]}, state {state.shape[1]}, cameras "
                         f"{sorted(image)}) do not fit the folder's layout {layout}")  # fmt: skip
    with atomic_writer(path) as file, h5py.File(file, "w") as f:
        for columns, arr in ((layout.action, actions), (layout.state, state)):
            start = 0
            for key, width, flat in columns:
                part = arr[:, start : start + width]
                f[key] = part[:, 0] if flat else part
                start += width
        for cam in layout.cameras:
            frames = np.asarray(image[cam])
            f[f"{cfg.image_group}/{cam}"] = frames[..., ::-1] if cfg.bgr else frames
        for key, arr in (extra or {}).items():
            f[f"lps/{key}"] = arr
        f.attrs.update(attrs or {})
