"""Raw DROID trajectory folders, as DROID's collection stack writes them (no conversion):

    DIR/<success|failure>/<date>/<time>/trajectory.h5        state and actions (no images)
    DIR/<success|failure>/<date>/<time>/recordings/MP4/<camera serial>.mp4   stereo side by side

State and actions use the same HDF5 keys as the converted layout (--state-keys, --action-keys);
each camera is its MP4 (every one, sorted by serial, unless --cameras names serials), the left
half of each stereo frame, frame i for step i (a video shorter than the trajectory is bad data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lps.data.validate import DatasetError

SUBFOLDERS = ("success", "failure")


def trajectories(folder: Path, include_failure: bool = True) -> list[tuple[Path, bool]]:
    found = []
    for sub in SUBFOLDERS:
        if sub == "failure" and not include_failure:
            continue
        found += [(p, sub == "success") for p in sorted((folder / sub).glob("*/*/trajectory.h5"))]
    return found


def read_dataset(folder: Path, action_keys: tuple[str, ...], state_keys: tuple[str, ...], cameras: tuple[str, ...],
                 include_failure: bool = True) -> dict[str, Any]:  # fmt: skip
    import av
    import h5py

    episodes, cams = [], None
    for i, (path, success) in enumerate(trajectories(folder, include_failure)):
        with h5py.File(path, "r") as f:
            arrays = {}
            for key in action_keys + state_keys:
                if key not in f:
                    raise DatasetError(f"{path}: missing key '{key}' (set --action-keys/--state-keys)")
                arr = np.asarray(f[key][()], np.float32)
                arrays[key] = arr[:, None] if arr.ndim == 1 else arr
        action = np.concatenate([arrays[k] for k in action_keys], 1)
        state = np.concatenate([arrays[k] for k in state_keys], 1)
        mp4 = path.parent / "recordings" / "MP4"
        serials = list(cameras) or sorted(p.stem for p in mp4.glob("*.mp4"))
        if not serials:
            raise DatasetError(f"{path.parent}: no camera recordings in {mp4}")
        cams = cams or serials
        images = {}
        for serial in serials:
            video = mp4 / f"{serial}.mp4"
            if not video.is_file():
                raise DatasetError(f"{path.parent}: camera recording missing: {video}")
            with av.open(str(video)) as container:
                frames = [fr.to_ndarray(format="rgb24") for _, fr in zip(range(len(action)), container.decode(video=0))]
            if len(frames) < len(action):
                raise DatasetError(f"{video}: {len(frames)} frames but the trajectory has {len(action)} steps")
            stereo = np.stack(frames)
            images[serial] = stereo[:, :, : stereo.shape[2] // 2]  # left image of the side-by-side pair
        episodes.append({"index": i, "state": state, "action": action, "images": images, "success": success})
    if not episodes:
        raise DatasetError(f"{folder}: no raw DROID trajectories (success/<date>/<time>/trajectory.h5)")
    return {"version": "raw DROID", "cameras": cams, "episodes": episodes}
