"""Robot demonstrations in the DROID-style HDF5 layout: a folder of episodes -> the row layout.

    DIR/success/*.h5   DIR/failure/*.h5   (one episode per file; failure/ is optional)

Each file holds `action/cartesian_velocity` (T, 6) and `action/gripper_position` (T,) or (T, 1)
(-> a 7-D action), `observation/robot_state/cartesian_position` (T, 6) and
`observation/robot_state/gripper_position` (-> 7-D proprio `state`), and one
`observation/image/<camera>_left` (T, H, W, 4) BGRA uint8 array per camera (-> RGB, resized,
cameras stacked on the channel axis: `image` (T, H, W, 3 * cameras)).

Rewards follow the LPS paper's semi-sparse scheme: -1 per step; on a success episode 0 at step
T - H, on a failure episode -100 there; masks 0 on the last H steps (no bootstrapping past the
outcome); terminal on the last step. Every key name, the cameras, the image size and the reward
values are `RobotDataConfig` fields (flags of `lps train` and `lps data robot`).

Reading decodes every image once, which is slow for real datasets; the result is cached in a
compact npz (uint8 images) next to the data, keyed by the files' names, sizes and modification
times and by the loader options, so the next run starts in seconds.

For a robot at run time, `droid_obs_to_lps(raw, cfg)` turns one observation dict as the robot
stack produces it (`{"robot_state": {...}, "image": {"<serial>_left": BGRA}}`) into the same
`{"state", "image"}` the policy was trained on, with the same channel order and resizing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lps.data.validate import DatasetError

CACHE_VERSION = 2  # 2: LeRobot/robomimic outcomes by --success-column and the reward rule
CACHE_DIR = ".lps-cache"
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
    normalize: Literal["none", "minmax", "meanstd", "quantile"] = "none"
    """none|minmax|meanstd|quantile: per-dimension state/action stats fitted on the training data, stored
    in the run and applied by load_policy/serve (actions in the robot's units need one of these)."""

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
        from lps.data.normalize import check_mode

        check_mode(self.normalize)
        if not self.action_keys or not self.state_keys:
            raise ValueError("--action-keys and --state-keys need at least one key each")


# --- one episode ------------------------------------------------------------------------------


def episode_paths(folder: str | os.PathLike, cfg: RobotDataConfig) -> list[tuple[Path, bool]]:
    """(path, is_success) of every episode file, in a fixed order (success first, then failure)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"robot dataset folder not found: {folder}")
    found = []
    for sub in SUBFOLDERS:
        if sub == "failure" and not cfg.include_failure:
            continue
        found += [(p, sub == "success") for p in sorted((folder / sub).glob("*.h5")) + sorted((folder / sub).glob("*.hdf5"))]
    if not found:
        raise DatasetError(
            f"{folder} holds no episodes: expected .h5 files in {folder / 'success'} (and optionally "
            f"{folder / 'failure'}); see README 'Your own robot data'"
        )
    return found


def read_episode(path: str | os.PathLike, cfg: RobotDataConfig = RobotDataConfig(), chunk_len: int = 5,
                 success: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """One validated episode in the row layout: observations {state (T, ds) f32, image (T, H, W, 3k)
    uint8}, actions (T, da), rewards, masks, terminals (T,). `success` defaults to whether the file
    lies in a `success` folder. Bad data raises `DatasetError` naming the file and the key."""
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
        frames = [_read(f, path, f"{cfg.image_group}/{c}") for c in cams]
    arrays.update({f"{cfg.image_group}/{c}": a for c, a in zip(cams, frames)})
    length = len(arrays[cfg.action_keys[0]])
    for key, arr in arrays.items():
        if len(arr) == 0:
            raise DatasetError(f"{path}: empty episode ('{key}' has 0 steps)")
        if len(arr) != length:
            raise DatasetError(
                f"{path}: length mismatch: '{key}' has {len(arr)} steps but '{cfg.action_keys[0]}' has {length}"
            )
    for key in cfg.action_keys + cfg.state_keys:  # named by key here; build_episode knows only the columns
        bad = ~np.isfinite(arrays[key])
        if bad.any():
            raise DatasetError(f"{path}: '{key}' holds NaN/inf at step {int(np.argwhere(bad)[0][0])}")
    for key, arr in zip(cams, frames):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (3, 4):
            raise DatasetError(
                f"{path}: '{cfg.image_group}/{key}' must be uint8 (T, H, W, 3 or 4), got {arr.dtype} {arr.shape}"
            )
    actions = np.concatenate([arrays[k] for k in cfg.action_keys], axis=-1)
    state = np.concatenate([arrays[k] for k in cfg.state_keys], axis=-1)
    return build_episode(state, actions, frames, success, cfg, chunk_len, f"{path}", bgr=cfg.bgr)


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


def droid_obs_to_lps(raw: dict, cfg: RobotDataConfig = RobotDataConfig()) -> dict[str, np.ndarray]:
    """One robot observation -> `{"state": (ds,) float32, "image": (H, W, 3k) uint8}`, exactly as
    training saw it. `raw` is the robot stack's dict (`{"robot_state": {...}, "image": {cam: BGRA}}`,
    optionally under an "observation" key, or with flat "a/b/c" keys), or already our dict."""
    ours_image = "image" in raw and not isinstance(raw["image"], dict)  # DROID's "image" is a dict of cameras
    if ("state" in raw) != ours_image and ("state" in raw or ours_image):  # our own layout, half of it
        have, lack = ("state", "image") if "state" in raw else ("image", "state")
        raise ValueError(f"observation has '{have}' but no '{lack}'; this policy takes {{'state', 'image'}} "
                         f"(keys sent: {sorted(map(str, raw))})")  # fmt: skip
    if "state" in raw and "image" in raw:
        image = np.asarray(raw["image"])
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"observation 'image' must be uint8 (H, W, C), got {image.dtype} {image.shape}")
        return {"state": np.asarray(raw["state"], np.float32).reshape(-1), "image": image}
    if cfg.state_column in raw:  # a LeRobot-style frame: {"observation.state": ..., "observation.images.<cam>": RGB}
        from lps.data.lerobot import IMAGE_PREFIX

        cams = [c if c in raw else IMAGE_PREFIX + c for c in cfg.cameras] or sorted(k for k in raw if k.startswith(IMAGE_PREFIX))
        missing = [c for c in cams if c not in raw]
        if missing or not cams:
            raise ValueError(f"observation lacks camera(s) {missing or IMAGE_PREFIX + '*'}; it has keys {sorted(raw)}")
        rgb_cfg = dataclasses.replace(cfg, bgr=False)
        image = np.concatenate([_to_rgb(np.asarray(raw[c])[None], rgb_cfg)[0] for c in cams], axis=-1)
        return {"state": np.asarray(raw[cfg.state_column], np.float32).reshape(-1), "image": image}
    state = np.concatenate([np.asarray(_lookup(raw, k), np.float32).reshape(-1) for k in cfg.state_keys])
    group = _lookup(raw, cfg.image_group)
    if not isinstance(group, dict):
        raise ValueError(f"observation '{cfg.image_group}' must be a dict of camera images, got {type(group).__name__}")
    cams = list(cfg.cameras) or sorted(k for k in group if k.endswith(cfg.camera_suffix))
    missing = [c for c in cams if c not in group]
    if missing or len(cams) != cfg.num_cameras:
        raise ValueError(
            f"observation has cameras {sorted(group)}; the policy needs {cfg.num_cameras} "
            f"({list(cfg.cameras) or '*' + cfg.camera_suffix})"
        )
    image = np.concatenate([_to_rgb(np.asarray(group[c])[None], cfg)[0] for c in cams], axis=-1)
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


def _to_rgb(frames: np.ndarray, cfg: RobotDataConfig) -> np.ndarray:
    """(T, H, W, 3|4) -> (T, S, S, 3) uint8 RGB, resized to `cfg.image_size` (bilinear) if set."""
    rgb = frames[..., :3]
    if cfg.bgr:
        rgb = rgb[..., ::-1]
    size = cfg.image_size
    if size and rgb.shape[1:3] != (size, size):
        from PIL import Image

        rgb = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((size, size), Image.BILINEAR)) for x in rgb])
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# --- a folder of episodes ---------------------------------------------------------------------


def load_folder(folder: str | os.PathLike, cfg: RobotDataConfig = RobotDataConfig(), chunk_len: int = 5,
                progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Every episode of `folder` in one row-layout dataset (observations a dict), from the cache
    when the files and options are unchanged. Bad episodes stop the load (naming file and key),
    or with `cfg.skip_bad` are skipped and listed. A LeRobot dataset (meta/info.json) is read by
    `lps.data.lerobot`; every camera it has (or --cameras) is stacked on the channel axis."""
    from lps.data import lerobot, robomimic

    if Path(folder).is_dir() and lerobot.is_lerobot(Path(folder)):
        return load_lerobot(folder, cfg, chunk_len, progress)
    if Path(folder).is_dir() and not (Path(folder) / "success").is_dir() and robomimic.files(Path(folder)):
        return load_lerobot(folder, cfg, chunk_len, progress, reader="robomimic")
    from lps.data import droid_raw

    if Path(folder).is_dir() and droid_raw.trajectories(Path(folder)):
        return load_lerobot(folder, cfg, chunk_len, progress, reader="droid_raw")
    if Path(folder).is_dir() and not any((Path(folder) / sub).is_dir() for sub in SUBFOLDERS):
        raise DatasetError(
            f"{folder} holds no episodes in a known robot data layout. Known layouts: LeRobot v2.1/v3.0 "
            "(meta/info.json), robomimic (*.hdf5 with data/demo_N), raw DROID (success/<date>/<time>/trajectory.h5 + "
            "recordings/MP4), HDF5 episodes (success/*.h5, failure/*.h5); "
            "see README 'Your own robot data'"
        )
    if not cfg.include_failure and Path(folder).is_dir():
        every = episode_paths(folder, dataclasses.replace(cfg, include_failure=True))
        _check_kept(folder, len(every), sum(success for _, success in every))
    paths = episode_paths(folder, cfg)
    cache_path = Path(folder) / CACHE_DIR / f"robot-{_cache_key(paths, cfg, chunk_len)}.npz"
    if cfg.cache and cache_path.exists():
        try:
            cached = _read_cache(cache_path)
            print(f"[lps] robot data from cache {cache_path} ({cached['info']})")
            return cached["dataset"]
        except (OSError, ValueError, KeyError) as e:  # a damaged cache is rebuilt, never trusted
            print(f"[lps] ignoring unreadable cache {cache_path} ({type(e).__name__}: {e}); reading the episodes")
    from tqdm import tqdm

    episodes, skipped, outcomes = [], [], []
    for path, success in tqdm(paths, desc="reading episodes", unit="ep", disable=not progress, dynamic_ncols=True):
        try:
            episodes.append(read_episode(path, cfg, chunk_len, success))
            outcomes.append(success)
        except DatasetError as e:
            if not cfg.skip_bad:
                raise DatasetError(f"{e}\n(pass --skip-bad to skip bad episodes with a summary instead)") from None
            skipped.append(str(e))
    if skipped:
        print(f"[lps] skipped {len(skipped)} of {len(paths)} episode(s) (--skip-bad):")
        for reason in skipped:
            print(f"  - {reason}")
    if not episodes:
        raise DatasetError(f"{folder}: every episode was bad; nothing to train on")
    shapes = {e["observations"]["image"].shape[1:] for e in episodes}
    if len(shapes) > 1:
        raise DatasetError(
            f"{folder}: episodes have different image sizes {sorted(shapes)}; set --image-size to resize them alike"
        )
    dataset = append_episodes(None, episodes)
    n_success = sum(outcomes)
    info = (f"{len(episodes)} episodes ({n_success} success, {len(episodes) - n_success} failure), "
            f"{len(dataset['actions'])} steps, image {dataset['observations']['image'].shape[1:]}")  # fmt: skip
    print(f"[lps] robot data: {info}")
    if cfg.cache:
        try:
            _write_cache(cache_path, dataset, info)
        except OSError as e:  # e.g. a read-only dataset folder: train anyway, just without the cache
            print(f"[lps] could not write the cache {cache_path} ({e}); the next run will read the episodes again")
    return dataset


def load_for_training(folder: str | os.PathLike, cfg: RobotDataConfig, chunk_len: int, progress: bool,
                      run_dirs: list[Path], stats: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """`load_folder`, normalised with stats fitted on it (`cfg.normalize`), which are stored in each
    run dir (or removed there for 'none'), then validated: the data a robot run trains on. Given
    `stats` (a trained run's), those are applied and nothing is stored."""
    from lps.data import normalize
    from lps.data.validate import validate

    data = normalize.prepare(load_folder(folder, cfg, chunk_len, progress), cfg.normalize, run_dirs, stats)
    _record_source(Path(folder), run_dirs)
    return validate(data, chunk_len, str(folder))


DATASET_JSON = "dataset.json"  # beside config.json: what the run's dataset says of itself


def _record_source(folder: Path, run_dirs: list[Path]) -> None:
    """robomimic files carry `env_args` (how to rebuild their simulator, e.g. to evaluate the
    policy there): the run keeps them in DATASET_JSON."""
    from lps.data import robomimic
    from lps.files import write_json

    if (folder / "success").is_dir() or not folder.is_dir() or not robomimic.files(folder):
        return
    record = {"format": "robomimic", "folder": str(folder), "env_args": robomimic.env_args(folder)}
    for run_dir in run_dirs:
        write_json(Path(run_dir) / DATASET_JSON, record)


def load_lerobot(folder: str | os.PathLike, cfg: RobotDataConfig = RobotDataConfig(), chunk_len: int = 5,
                 progress: bool = True, reader: str = "lerobot") -> dict[str, Any]:  # fmt: skip
    """A local LeRobot dataset (or, with reader="robomimic", robomimic files) in the row layout,
    cached like an HDF5 folder."""
    from lps.data import lerobot, robomimic

    folder = Path(folder)
    inputs = sorted(p for p in folder.rglob("*") if p.is_file() and CACHE_DIR not in p.parts)
    cache_path = folder / CACHE_DIR / f"robot-{_cache_key([(p, True) for p in inputs], cfg, chunk_len)}.npz"
    if cfg.cache and cache_path.exists():
        try:
            cached = _read_cache(cache_path)
            print(f"[lps] robot data from cache {cache_path} ({cached['info']})")
            return cached["dataset"]
        except (OSError, ValueError, KeyError) as e:
            print(f"[lps] ignoring unreadable cache {cache_path} ({type(e).__name__}: {e}); reading the dataset")
    if reader == "droid_raw":
        from lps.data import droid_raw

        every, kept = droid_raw.trajectories(folder), droid_raw.trajectories(folder, cfg.include_failure)
        _check_kept(folder, len(every), len(kept))
        raw = droid_raw.read_dataset(folder, cfg.action_keys, cfg.state_keys, cfg.cameras, cfg.include_failure)
    elif reader == "robomimic":
        state_keys = () if cfg.state_keys == RobotDataConfig.state_keys else cfg.state_keys
        raw = robomimic.read_dataset(folder, state_keys, cfg.cameras, cfg.robomimic_filter, cfg.include_failure)
    else:
        print(lerobot.estimate(folder, cfg.cameras))
        raw = lerobot.read_dataset(folder, cfg.state_column, cfg.action_column, cfg.cameras, cfg.failure_episodes,
                                   cfg.success_column, cfg.include_failure)  # fmt: skip
    _check_kept(folder, len(raw["episodes"]) + raw.get("dropped", 0), len(raw["episodes"]))
    if raw.get("dropped"):
        print(f"[lps] left out {raw['dropped']} failure episode(s) (--no-include-failure; --include-failure "
              "keeps them)")  # fmt: skip
    episodes, skipped = [], []
    for ep in raw["episodes"]:
        try:
            episodes.append(build_episode(ep["state"], ep["action"], [ep["images"][c] for c in raw["cameras"]],
                                          ep["success"], cfg, chunk_len, f"{folder} episode {ep['index']}"))  # fmt: skip
        except DatasetError as e:
            if not cfg.skip_bad:
                raise DatasetError(f"{e}\n(pass --skip-bad to skip bad episodes with a summary instead)") from None
            skipped.append(str(e))
    for reason in skipped:
        print(f"[lps] skipped (--skip-bad): {reason}")
    if not episodes:
        raise DatasetError(f"{folder}: every episode was bad; nothing to train on")
    shapes = {e["observations"]["image"].shape[1:] for e in episodes}
    if len(shapes) > 1:
        raise DatasetError(f"{folder}: episodes have different image sizes {sorted(shapes)}; set --image-size to resize them alike")
    dataset = append_episodes(None, episodes)
    n_success = sum(bool(e["rewards"][-chunk_len] == cfg.success_reward) for e in episodes)
    info = (f"{'LeRobot ' if reader == 'lerobot' else ''}{raw['version']}, {len(episodes)} episodes ({n_success} success, {len(episodes) - n_success} failure), "
            f"{len(dataset['actions'])} steps, cameras {raw['cameras']} stacked as image {dataset['observations']['image'].shape[1:]}")  # fmt: skip
    print(f"[lps] robot data: {info}")
    if cfg.cache:
        try:
            _write_cache(cache_path, dataset, info)
        except OSError as e:
            print(f"[lps] could not write the cache {cache_path} ({e}); the next run will read the dataset again")
    return dataset


def _check_kept(folder: str | os.PathLike, found: int, kept: int) -> None:
    """Every one of the `found` episodes was a failure and --no-include-failure left none: say so."""
    if found and not kept:
        raise DatasetError(
            f"{folder}: all {found} episode(s) are failures and failures are left out (--no-include-failure, "
            "the robot preset's default); pass --include-failure to train on them"
        )


def summary(data: dict[str, Any], cfg: RobotDataConfig, chunk_len: int) -> str:
    """What `lps data robot DIR` prints: steps, episodes, outcomes, image, per-dimension ranges."""
    obs, actions = data["observations"], data["actions"]
    ends = np.flatnonzero(data["terminals"])
    outcome_rows = ends - chunk_len + 1
    failures = int(np.sum(data["rewards"][outcome_rows] == cfg.failure_reward))
    lines = [f"[lps] {len(ends)} episodes ({len(ends) - failures} success, {failures} failure), {len(actions)} steps",
             f"[lps] image {obs['image'].shape[1:]} uint8 ({obs['image'].shape[-1] // 3} camera(s) stacked on channels)"]  # fmt: skip
    for name, arr in (("state", obs["state"]), ("actions", actions)):
        lo, hi = arr.min(0), arr.max(0)
        fmt = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v) + "]"  # noqa: E731
        lines.append(f"[lps] {name} {arr.shape[1:]}: min {fmt(lo)} max {fmt(hi)}")
        constant = np.flatnonzero(hi - lo <= 1e-8).tolist()
        if constant:
            lines.append(f"[lps]   {name} dimension(s) {constant} are constant (normalisation leaves them unscaled)")
    return "\n".join(lines)


def build_episode(state: np.ndarray, actions: np.ndarray, frames: list[np.ndarray], success: bool,
                  cfg: RobotDataConfig, chunk_len: int, where: str, bgr: bool = False) -> dict[str, Any]:  # fmt: skip
    """Raw arrays of one episode (frames per camera: RGB, or BGR(A) with `bgr`) -> the row layout
    with the paper's rewards: the one place every format's episodes are checked and labelled."""
    length = len(actions)
    for name, arr in [("state", state), ("action", actions)] + [(f"camera {i}", f) for i, f in enumerate(frames)]:
        if len(arr) != length:
            raise DatasetError(f"{where}: {name} has {len(arr)} steps but the action has {length}")
    for name, arr in (("state", state), ("action", actions)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DatasetError(f"{where}: {name} holds NaN/inf at step {int(np.argwhere(bad)[0][0])}")
    worst = float(np.max(np.abs(actions)))
    if worst > 1.0 + 1e-5 and cfg.normalize == "none":
        raise DatasetError(
            f"{where}: actions must lie in [-1, 1] but reach {worst:.4g}; rescale them when recording, or pass "
            "--normalize minmax (or quantile) to train on actions in the robot's units"
        )
    if length <= chunk_len:
        raise DatasetError(f"{where}: episode has {length} steps; it needs more than the chunk length {chunk_len}")
    rgb_cfg = dataclasses.replace(cfg, bgr=bgr)
    image = np.concatenate([_to_rgb(f, rgb_cfg) for f in frames], axis=-1)
    return {
        "observations": {"state": state.astype(np.float32), "image": image},
        "actions": (np.clip(actions, -1.0, 1.0) if cfg.normalize == "none" else actions).astype(np.float32),
        **semi_sparse_labels(length, success, chunk_len, cfg),
    }


def append_episodes(dataset: dict[str, Any] | None, episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The row-layout dataset with `episodes` (each as `read_episode` returns it) appended: the one
    way episodes join a dataset, whether read from disk or collected online."""
    parts = ([dataset] if dataset is not None else []) + list(episodes)
    if not parts:
        raise ValueError("append_episodes needs at least one episode")
    for i, ep in enumerate(parts):
        if not np.asarray(ep["terminals"])[-1]:
            raise DatasetError(f"episode {i} does not end with a terminal row (terminals[-1] must be 1)")
    out = {}
    for key in ("actions", "rewards", "masks", "terminals"):
        out[key] = np.concatenate([np.asarray(p[key]) for p in parts])
    obs_keys = parts[0]["observations"].keys()
    out["observations"] = {k: np.concatenate([p["observations"][k] for p in parts]) for k in obs_keys}
    return out


def _cache_key(paths: list[tuple[Path, bool]], cfg: RobotDataConfig, chunk_len: int) -> str:
    """Changes when any episode file is added, removed, rewritten, or any loader option changes."""
    h = hashlib.sha256()
    options = {**dataclasses.asdict(cfg), "chunk_len": chunk_len, "version": CACHE_VERSION}
    options.pop("cache")
    h.update(json.dumps(options, sort_keys=True).encode())
    for path, success in paths:
        st = path.stat()
        h.update(f"{path.parent.name}/{path.name}|{st.st_size}|{st.st_mtime_ns}|{success}\n".encode())
    return h.hexdigest()[:16]


def _write_cache(path: Path, dataset: dict[str, Any], info: str) -> None:
    """Uncompressed npz (images are uint8 already; compression would cost seconds on every load),
    written to a temporary file and renamed, so a killed run never leaves a half-written cache."""
    from lps.files import atomic_writer

    arrays = {f"observations/{k}": v for k, v in dataset["observations"].items()}
    arrays.update({k: v for k, v in dataset.items() if k != "observations"})
    arrays["info"] = np.array(info)
    with atomic_writer(path) as f:  # streamed: a cache of camera images can be gigabytes
        np.savez(f, **arrays)
    for old in path.parent.glob("robot-*.npz"):  # older caches of this folder are stale now
        if old != path:
            old.unlink(missing_ok=True)


def _read_cache(path: Path) -> dict[str, Any]:
    """The cached dataset; a ValueError (or OSError, KeyError) for a cache that cannot be trusted."""
    import zipfile
    import zlib

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:  # truncated or overwritten
        raise ValueError(f"{type(e).__name__}: {e}") from e
    missing = {"actions", "terminals", "rewards", "masks", "info"} - set(arrays)
    if missing:
        raise KeyError(f"no {sorted(missing)} in the cache")
    dataset = {k: v for k, v in arrays.items() if "/" not in k and k != "info"}
    dataset["observations"] = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("observations/")}
    return {"dataset": dataset, "info": str(arrays["info"])}


# --- writing episodes (recording, tests, benchmarks) -------------------------------------------


def write_episode(path: str | os.PathLike, actions: np.ndarray, state: np.ndarray, images: dict[str, np.ndarray],
                  cfg: RobotDataConfig = RobotDataConfig()) -> None:  # fmt: skip
    """Write one episode in the layout `read_episode` reads: `actions` (T, 7) split into
    cartesian velocity and gripper, `state` (T, 7) likewise, `images` {camera: (T, H, W, 4) BGRA}.
    Written to a temporary file and renamed, so a reader never sees half an episode."""
    import h5py

    from lps.files import atomic_writer

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

    path = episode_paths(folder, dataclasses.replace(cfg, include_failure=True))[0][0]
    with h5py.File(path, "r") as f:
        def columns(keys):
            shapes = [f[k].shape for k in keys if k in f]
            if len(shapes) != len(keys):
                raise DatasetError(f"{path}: lacks one of {list(keys)}")
            return tuple((k, 1 if len(s) == 1 else int(s[1]), len(s) == 1) for k, s in zip(keys, shapes))

        return EpisodeLayout(columns(cfg.action_keys), columns(cfg.state_keys), tuple(_camera_keys(f, path, cfg)))


def write_rows_episode(path: str | os.PathLike, layout: EpisodeLayout, state: np.ndarray, actions: np.ndarray,
                       image: np.ndarray, cfg: RobotDataConfig, extra: dict[str, np.ndarray] | None = None,
                       attrs: dict[str, str] | None = None) -> None:  # fmt: skip
    """An episode in the row layout (state (T, ds), actions (T, da), image (T, H, W, 3 x cameras)
    RGB) written back in its folder's own HDF5 layout, so `read_episode` reads what was written:
    columns split by the layout's keys, each camera's frames under its name (BGR when the folder's
    are). `extra` arrays go under `lps/`, `attrs` on the file. Temporary file, then rename."""
    import h5py

    from lps.files import atomic_writer

    widths = [w for _, w, _ in layout.action], [w for _, w, _ in layout.state]
    if sum(widths[0]) != actions.shape[1] or sum(widths[1]) != state.shape[1] or image.shape[-1] != 3 * len(layout.cameras):
        raise ValueError(f"the episode's columns (actions {actions.shape[1]}, state {state.shape[1]}, image "
                         f"{image.shape[-1]} channels) do not fit the folder's layout {layout}")  # fmt: skip
    with atomic_writer(path) as file, h5py.File(file, "w") as f:
        for columns, arr in ((layout.action, actions), (layout.state, state)):
            start = 0
            for key, width, flat in columns:
                part = arr[:, start : start + width]
                f[key] = part[:, 0] if flat else part
                start += width
        for i, cam in enumerate(layout.cameras):
            frames = image[..., 3 * i : 3 * i + 3]
            f[f"{cfg.image_group}/{cam}"] = frames[..., ::-1] if cfg.bgr else frames
        for key, arr in (extra or {}).items():
            f[f"lps/{key}"] = arr
        f.attrs.update(attrs or {})


def synthetic_folder(folder: str | os.PathLike, success: int = 5, failure: int = 2, steps: int = 40,
                     size: int = 32, cameras: tuple[str, ...] = ("ext1_left", "wrist_left"), seed: int = 0) -> Path:  # fmt: skip
    """A tiny dataset in the DROID layout whose actions depend on the images and the state (so a
    policy can learn them): for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    for i in range(success + failure):
        sub = "success" if i < success else "failure"
        t = np.linspace(0, 1, steps, dtype=np.float32)[:, None]
        goal = rng.uniform(-0.5, 0.5, (1, 6)).astype(np.float32)
        cart = goal * t + 0.02 * rng.standard_normal((steps, 6)).astype(np.float32)
        state = np.concatenate([cart, (t > 0.5).astype(np.float32)], axis=1)
        actions = np.clip(np.concatenate([np.repeat(goal, steps, 0), 2 * (t > 0.5) - 1], axis=1), -1, 1)
        images = {}
        for c, cam in enumerate(cameras):
            frames = rng.integers(0, 40, (steps, size, size, 4), dtype=np.uint8)
            # A bright square whose position encodes the goal, so the images carry the task.
            row = int((goal[0, c % 6] + 0.5) * (size - 8))
            frames[:, row : row + 8, size // 4 : size // 4 + 8, :3] = 255
            images[cam] = frames
        write_episode(folder / sub / f"episode_{i:03d}.h5", actions.astype(np.float32), state, images)
    return folder
