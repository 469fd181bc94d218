"""Synthetic datasets in the layouts lps reads, for trying the robot loop without a robot and for
tests and benchmarks; see docs/robot-data.md ("Synthetic datasets").

    from lps.data import synthetic
    synthetic.hdf5_folder("demos")                  # DROID-style HDF5: success/*.h5, failure/*.h5
    synthetic.lerobot_dataset("ds", "v3.0")         # LeRobot v2.1 / v3.0: parquet + H.264 MP4s
    synthetic.row_dataset(100, 1001, 28, 5)         # random state rows in the row layout (an npz's)

Then `lps data robot DIR` and `lps train --preset robot --dataset DIR` read them as any other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lps.data.lerobot import IMAGE_PREFIX
from lps.data.robot import write_episode
from lps.files import atomic_writer


def row_dataset(episodes: int, length: int, obs_dim: int, action_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random rows in the row layout: `episodes` episodes of `length` steps, standard-normal state
    observations, actions uniform in [-1, 1], sparse rewards (0 or -1) and masks 1; for measuring
    speed and for tests, nothing a policy could learn."""
    rng = np.random.default_rng(seed)
    n = episodes * length
    terminals = np.zeros(n, bool)
    terminals[length - 1 :: length] = True
    return {
        "observations": rng.standard_normal((n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        "rewards": -rng.integers(0, 2, n).astype(np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": terminals,
    }


def hdf5_folder(folder: str | os.PathLike, success: int = 5, failure: int = 2, steps: int = 40,
                size: int = 32, cameras: tuple[str, ...] = ("ext1_left", "wrist_left"), seed: int = 0) -> Path:  # fmt: skip
    """A tiny dataset in the DROID-style HDF5 layout (`success/` and `failure/` episodes, 7-D actions
    and state, BGRA cameras) whose actions depend on the images and the state, so a policy can learn
    them. Returns `folder`."""
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


def lerobot_dataset(folder: str | os.PathLike, version: str = "v2.1", episodes: int = 3, steps: int = 12, size: int = 32,
                    cameras: tuple[str, ...] = ("front", "wrist"), fps: int = 10, action_dim: int = 4,
                    state_dim: int = 3, seed: int = 0, codec: str = "libx264", action_scale: float = 1.0,
                    action_offset: float = 0.0, sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """A tiny LeRobot dataset (`version` "v2.1" or "v3.0") on disk; returns what was written
    ({state, action, images} per episode) so a test can compare. Each frame is one flat colour that
    changes with the step (codec-friendly). Every camera is `size` x `size` unless `sizes` gives it
    its own (height, width). Needs pyarrow and PyAV (the robot extra)."""
    folder = Path(folder)
    shapes = {IMAGE_PREFIX + c: (sizes or {}).get(c, (size, size)) for c in cameras}
    rng = np.random.default_rng(seed)
    written = [_lerobot_episode(rng, e, steps, shapes, state_dim, action_dim, action_scale, action_offset)
               for e in range(episodes)]  # fmt: skip
    features = {"observation.state": {"dtype": "float32", "shape": [state_dim]},
                "action": {"dtype": "float32", "shape": [action_dim]}}  # fmt: skip
    features.update({k: {"dtype": "video", "shape": [*shape, 3]} for k, shape in shapes.items()})
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    write = _write_v21 if version == "v2.1" else _write_v30
    info = {"codebase_version": "v2.1" if version == "v2.1" else "v3.0", "fps": fps, "chunks_size": 1000,
            "total_episodes": episodes, "total_frames": episodes * steps,
            **write(folder, written, list(shapes), steps, fps, codec), "features": features}  # fmt: skip
    (folder / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return {"fps": fps, "cameras": list(shapes), "episodes": written}


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str = "libx264") -> None:
    """(N, H, W, 3) uint8 RGB -> an MP4 at `fps` (frame i presented at i / fps)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f, av.open(f, "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "0", "preset": "ultrafast"}
        elif codec == "libsvtav1":  # LeRobot's default codec; the fastest preset keeps tests short
            stream.options = {"preset": "12", "crf": "10"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode(None))


def _lerobot_episode(rng, e: int, steps: int, shapes: dict[str, tuple[int, int]], state_dim: int, action_dim: int,
                     action_scale: float, action_offset: float) -> dict[str, Any]:  # fmt: skip
    state = rng.uniform(-2, 2, (steps, state_dim)).astype(np.float32)
    action = (action_offset + action_scale * rng.uniform(-1, 1, (steps, action_dim))).astype(np.float32)
    images = {}
    for c, (key, (height, width)) in enumerate(shapes.items()):
        colour = np.stack([np.linspace(30, 220, steps), np.full(steps, 60.0 + 40 * c + 20 * e),
                           np.linspace(200, 40, steps)], axis=1).astype(np.uint8)  # fmt: skip
        images[key] = np.broadcast_to(colour[:, None, None, :], (steps, height, width, 3)).copy()
    return {"state": state, "action": action, "images": images}


def _lerobot_table(episode: dict[str, Any], e: int, start: int, fps: int):
    import pyarrow as pa

    n = len(episode["state"])
    return pa.table({
        "observation.state": [list(map(float, r)) for r in episode["state"]],
        "action": [list(map(float, r)) for r in episode["action"]],
        "timestamp": (np.arange(n) / fps).astype(np.float32),
        "frame_index": np.arange(n), "episode_index": np.full(n, e), "index": start + np.arange(n),
        "task_index": np.zeros(n, np.int64),
    })  # fmt: skip


def _write_v21(folder: Path, written: list, keys: list[str], steps: int, fps: int, codec: str) -> dict:
    """v2.1: a parquet file and a video per camera for each episode, episodes.jsonl; info.json's paths."""
    import pyarrow.parquet as pq

    lines = []
    for e, episode in enumerate(written):
        path = folder / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_lerobot_table(episode, e, e * steps, fps), path)
        for key in keys:
            write_video(folder / f"videos/chunk-000/{key}/episode_{e:06d}.mp4", episode["images"][key], fps, codec)
        lines.append(json.dumps({"episode_index": e, "tasks": ["task"], "length": steps}))
    (folder / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return {"data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}  # fmt: skip


def _write_v30(folder: Path, written: list, keys: list[str], steps: int, fps: int, codec: str) -> dict:
    """v3.0: one parquet file and one video per camera for all episodes, an episodes table; info.json's paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    episodes = len(written)
    path = folder / "data/chunk-000/file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([_lerobot_table(w, e, e * steps, fps) for e, w in enumerate(written)]), path)
    for key in keys:
        write_video(folder / f"videos/{key}/chunk-000/file-000.mp4",
                    np.concatenate([w["images"][key] for w in written]), fps, codec)  # fmt: skip
    meta = {"episode_index": list(range(episodes)), "length": [steps] * episodes,
            "data/chunk_index": [0] * episodes, "data/file_index": [0] * episodes,
            "dataset_from_index": [e * steps for e in range(episodes)],
            "dataset_to_index": [(e + 1) * steps for e in range(episodes)]}  # fmt: skip
    for key in keys:
        meta[f"videos/{key}/chunk_index"] = [0] * episodes
        meta[f"videos/{key}/file_index"] = [0] * episodes
        meta[f"videos/{key}/from_timestamp"] = [e * steps / fps for e in range(episodes)]
        meta[f"videos/{key}/to_timestamp"] = [(e + 1) * steps / fps for e in range(episodes)]
    (folder / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(meta), folder / "meta/episodes/chunk-000/file-000.parquet")
    return {"data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}  # fmt: skip
