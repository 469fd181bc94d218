"""Raw DROID trajectory folders, as DROID's collection stack writes them (no conversion); see
docs/robot-data.md.

    DIR/<success|failure>/<date>/<time>/trajectory.h5                 state, actions, timestamps
    DIR/<success|failure>/<date>/<time>/recordings/MP4/<serial>.mp4          left view only
    DIR/<success|failure>/<date>/<time>/recordings/MP4/<serial>-stereo.mp4   left | right pair

Cameras are named by serial (`--cameras` picks them); state and actions use the HDF5 layout's keys.
Frames are matched to steps by time, never by index: DROID's capture timestamps, else the robot
timestamps against the video's frame times, else (no timestamps) one frame per step exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lps.data.lerobot import decode_video, match_frames
from lps.data.validate import DatasetError

SUBFOLDERS = ("success", "failure")
CAPTURE_KEY = "observation/timestamp/cameras/{serial}_estimated_capture"
ROBOT_TIME_KEYS = ("observation/timestamp/robot_state/robot_timestamp_seconds",
                   "observation/timestamp/robot_state/robot_timestamp_nanos")  # fmt: skip
STEREO_SUFFIX = "-stereo"


def trajectories(folder: Path) -> list[tuple[Path, bool]]:
    """(trajectory.h5, is_success) of every trajectory, success first."""
    found = []
    for sub in SUBFOLDERS:
        found += [(p, sub == "success") for p in sorted((folder / sub).glob("*/*/trajectory.h5"))]
    return found


def camera_serials(mp4: Path) -> list[str]:
    """The serials with a recording in `mp4` (mono or stereo file), sorted."""
    return sorted({p.stem.removesuffix(STEREO_SUFFIX) for p in mp4.glob("*.mp4")})


def read_dataset(folder: Path, action_keys: tuple[str, ...], state_keys: tuple[str, ...],
                 cameras: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """{"version", "episodes": [{state, action, images {serial: RGB frames}, success, where}]} of
    every trajectory under `folder`."""
    import h5py

    found = trajectories(folder)
    if not found:
        raise DatasetError(f"{folder}: no raw DROID trajectories (success/<date>/<time>/trajectory.h5)")
    episodes = []
    for path, success in found:
        with h5py.File(path, "r") as f:
            columns = {}
            for key in action_keys + state_keys:
                if key not in f:
                    raise DatasetError(f"{path}: missing key '{key}' (set --action-keys/--state-keys)")
                arr = np.asarray(f[key][()], np.float32)
                columns[key] = arr[:, None] if arr.ndim == 1 else arr
            step_times = _step_times(f)
            mp4 = path.parent / "recordings" / "MP4"
            serials = list(cameras) or camera_serials(mp4)
            if not serials:
                raise DatasetError(f"{path.parent}: no camera recordings in {mp4}")
            steps = len(columns[action_keys[0]])
            images = {serial: camera_frames(mp4, serial, steps, step_times, f) for serial in serials}
        episodes.append({"state": np.concatenate([columns[k] for k in state_keys], 1),
                         "action": np.concatenate([columns[k] for k in action_keys], 1),
                         "images": images, "success": success, "where": str(path.parent)})  # fmt: skip
    return {"version": "raw DROID", "episodes": episodes}


def _step_times(f) -> np.ndarray | None:
    """Each step's robot time in seconds from the first step, or None without robot timestamps."""
    if not all(key in f for key in ROBOT_TIME_KEYS):
        return None
    seconds, nanos = (np.asarray(f[key][()], np.float64).reshape(-1) for key in ROBOT_TIME_KEYS)
    times = seconds + nanos * 1e-9
    return times - times[0]


def camera_frames(mp4: Path, serial: str, steps: int, step_times: np.ndarray | None, trajectory) -> np.ndarray:
    """One frame per trajectory step of camera `serial` (RGB), matched by time (module docstring)."""
    mono, stereo = mp4 / f"{serial}.mp4", mp4 / f"{serial}{STEREO_SUFFIX}.mp4"
    video = mono if mono.is_file() else stereo
    if not video.is_file():
        have = camera_serials(mp4)
        raise DatasetError(f"{mp4}: no recording of camera {serial} ({mono.name} or {stereo.name}); cameras there: {have}")
    frames, pts = decode_video(video, None)
    if video == stereo:
        frames = frames[:, :, : frames.shape[2] // 2]  # the left view of the side-by-side pair
    where = f"{video} (trajectory {trajectory.filename})"
    capture_key = CAPTURE_KEY.format(serial=serial)
    stamps_file = video.with_name(video.stem + "_timestamps.json")
    if capture_key in trajectory and stamps_file.is_file():
        frame_times = np.asarray(json.loads(stamps_file.read_text()), np.float64)[: len(frames)]
        wanted = np.asarray(trajectory[capture_key][()], np.float64).reshape(-1)
        frames = frames[: len(frame_times)]
        return _match(frames, frame_times, wanted, where)
    if step_times is not None:
        return _match(frames, pts - pts[0], step_times, where)
    if len(frames) != steps:
        raise DatasetError(
            f"{where}: {len(frames)} frames for {steps} steps and no timestamps to match them by (neither "
            f"'{capture_key}' with {stamps_file.name} nor the robot timestamps); frames are never taken by index "
            "unless there is exactly one per step"
        )
    return frames


def _match(frames: np.ndarray, frame_times: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    """The nearest frame to each wanted time, within half the video's (median) frame period."""
    if len(frame_times) < 2:
        raise DatasetError(f"{where}: {len(frame_times)} timed frame(s); cannot cover a trajectory")
    period = float(np.median(np.diff(np.sort(frame_times))))
    return match_frames(frames, frame_times, wanted, 1.0 / period if period > 0 else 1.0, where, tolerance=0.5)
