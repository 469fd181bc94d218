"""LeRobot datasets (v2.1 and v3.0) read from a local folder with pyarrow and PyAV: no torch, no hub;
see docs/robot-data.md.

Rows are matched to video frames by timestamp (within a quarter frame, plus the episode's offset
in a v3.0 file, each file decoded once); cameras stored as images in the table are decoded from
their bytes. Outcomes are decided from the tables before any video is decoded: `--success-column`,
else `next.success`, else `next.reward` (`success_from_rewards`), with `--failure-episodes`
forcing failures. Each episode comes back as raw arrays (state, action, RGB frames per camera,
success); `lps.data.robot` labels them (and leaves failures out with `--no-include-failure`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from lps.data.validate import DatasetError

IMAGE_PREFIX = "observation.images."


def is_lerobot(folder: Path) -> bool:
    return (folder / "meta" / "info.json").is_file()


def read_info(folder: Path) -> dict[str, Any]:
    path = folder / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read as JSON ({e})") from e
    version = str(info.get("codebase_version", ""))
    if not (version.startswith("v2") or version.startswith("v3")):
        raise DatasetError(f"{path}: codebase_version {version!r} is not supported; LeRobot v2.1 and v3.0 are")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DatasetError(f"{path}: lacks '{key}' (is this a LeRobot dataset?)")
    return info


def camera_columns(info: dict[str, Any], cameras: tuple[str, ...]) -> list[str]:
    """The camera features to stack, in order: the named ones (with or without the
    'observation.images.' prefix), else every `observation.images.*` feature, sorted."""
    feats = info["features"]
    visual = sorted(k for k, v in feats.items() if v.get("dtype") in ("video", "image"))
    if not cameras:
        return [k for k in visual if k.startswith(IMAGE_PREFIX)] or visual
    out = []
    for cam in cameras:
        key = cam if cam in feats else IMAGE_PREFIX + cam
        if key not in feats or feats[key].get("dtype") not in ("video", "image"):
            raise DatasetError(f"camera '{cam}' is not a video/image feature of this dataset; cameras: {visual}")
        out.append(key)
    return out


DECODE_FRAMES_PER_S = 1000  # bench/robot_decode.py: H.264 128x128 on one loaded CPU core (PyAV)


def estimate(folder: Path, cameras: tuple[str, ...] = ()) -> str:
    """A line saying how much decoding lies ahead (from info.json's total_frames and shapes)."""
    info = read_info(folder)
    rows = int(info.get("total_frames", 0))
    cams = camera_columns(info, cameras)
    pixels = sum(int(np.prod(info["features"][c].get("shape", [0]))) for c in cams)
    if not rows:
        return f"[lps] decoding {len(cams)} camera(s); info.json gives no total_frames to estimate the time"
    frames = rows * len(cams)
    return (f"[lps] decoding {frames} frames ({rows} rows x {len(cams)} camera(s)): ~{rows * pixels / 2**20:.0f} MiB "
            f"of images in memory and in the cache, roughly {frames / DECODE_FRAMES_PER_S:.0f} s; later runs read the cache")


def read_dataset(folder: Path, state_column: str, action_column: str, cameras: tuple[str, ...],
                 failure_episodes: tuple[int, ...] = (), success_column: str = "") -> dict[str, Any]:  # fmt: skip
    """{"version", "fps", "episodes": [{state (T, ds), action (T, da), images {camera name: (T, H, W,
    3) uint8 RGB}, success, where}]} of a local LeRobot dataset, outcomes as the module docstring says."""
    info = read_info(folder)
    fps = float(info["fps"])
    cams = camera_columns(info, cameras)
    version = str(info["codebase_version"])
    tables = _episode_tables(folder, info, version)
    first = tables[0][1]
    for col in (state_column, action_column):
        if col not in first.column_names:
            raise DatasetError(
                f"{folder}: column '{col}' does not exist; the table's columns are {first.column_names} "
                "(choose them with --state-column / --action-column)"
            )
    outcomes = episode_outcomes(folder, tables, success_column, failure_episodes)
    episodes, kept = [], []
    for (meta, table), success in zip(tables, outcomes):
        index = int(meta["episode_index"])
        where = f"{folder} episode {index}"
        timestamps = np.asarray(table.column("timestamp").to_numpy(), np.float64) if "timestamp" in table.column_names \
            else np.arange(len(table)) / fps  # fmt: skip
        kept.append((meta, table, where, timestamps))
        episodes.append({"state": _matrix(table, state_column, where), "action": _matrix(table, action_column, where),
                         "images": {}, "success": success, "where": where})  # fmt: skip
    # Camera by camera, episodes in file order: a v3.0 video file holds many episodes and is
    # decoded once for all of them (one file per camera in memory at a time).
    for cam in cams:
        name = camera_name(cam)
        current: tuple[Path, np.ndarray, np.ndarray] | None = None
        for (meta, table, where, timestamps), episode in zip(kept, episodes):
            if info["features"][cam].get("dtype") == "image":
                episode["images"][name] = _table_images(table, cam, where)
                continue
            path = folder / _video_path(info, version, cam, meta)
            if not path.is_file():
                raise DatasetError(f"{where}: video file missing: {path}")
            if current is None or current[0] != path:
                current = (path, *decode_video(path, fps))
            offset = float(meta.get(f"videos/{cam}/from_timestamp", 0.0))
            episode["images"][name] = match_frames(current[1], current[2], timestamps + offset, fps,
                                                   f"{where}, camera '{cam}' ({path})")  # fmt: skip
    return {"version": f"LeRobot {version}", "fps": fps, "episodes": episodes}


def camera_name(column: str) -> str:
    """A camera's name in lps (observations, the server): its feature without 'observation.images.'."""
    return column.removeprefix(IMAGE_PREFIX)


SUCCESS_COLUMN = "next.success"
REWARD_COLUMN = "next.reward"


def episode_outcomes(folder: Path, tables: list[tuple[dict, Any]], success_column: str = "",
                     failure_episodes: tuple[int, ...] = ()) -> list[bool]:  # fmt: skip
    """Whether each episode (of `_episode_tables`) succeeded, by the rule of the module docstring."""
    if success_column:
        for meta, table in tables:
            if success_column not in table.column_names:
                raise DatasetError(
                    f"{folder}: success column '{success_column}' does not exist (episode {meta['episode_index']}); "
                    f"the table's columns are {table.column_names} (choose it with --success-column)"
                )
    outcomes = []
    peaks: list[float | None] = []
    for meta, table in tables:
        where = f"{folder} episode {meta['episode_index']}"
        column = success_column or (SUCCESS_COLUMN if SUCCESS_COLUMN in table.column_names else "")
        if column:
            values = _flat_values(table, column, where)
            outcomes.append(bool(np.any(values != 0)))
            peaks.append(None)
        else:
            outcomes.append(None)
            values = _flat_values(table, REWARD_COLUMN, where) if REWARD_COLUMN in table.column_names else np.zeros(0)
            peaks.append(float(np.max(values)) if len(values) else None)
    from_rewards = success_from_rewards(peaks)
    forced = {int(i) for i in failure_episodes}
    return [(labelled if labelled is not None else by_reward) and int(meta["episode_index"]) not in forced
            for (meta, _), labelled, by_reward in zip(tables, outcomes, from_rewards)]  # fmt: skip


def success_from_rewards(peaks: list[float | None]) -> list[bool]:
    """Outcomes from each episode's largest reward (None: the episode has no rewards): a success
    iff its largest reward is > 0, but only when some episode's is; when no reward of the whole
    dataset is > 0 (step rewards of -1/0, all zeros, none recorded) rewards say nothing about the
    outcome and every episode is a success. Episodes without rewards are successes."""
    if not any(p is not None and p > 0 for p in peaks):
        return [True] * len(peaks)
    return [p is None or p > 0 for p in peaks]


def _flat_values(table, column: str, where: str) -> np.ndarray:
    """Every non-null value of a scalar (or one-element list) column as float64."""
    flat = []
    for cell in table.column(column).to_pylist():
        flat.extend(cell if isinstance(cell, (list, tuple)) else [cell])
    try:
        values = np.asarray([v for v in flat if v is not None], np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: column '{column}' is not numeric or boolean ({e})") from e
    return values[~np.isnan(values)]


def _episode_tables(folder: Path, info: dict[str, Any], version: str) -> list[tuple[dict, Any]]:
    """(episode metadata, its rows as a pyarrow table) for every episode, in index order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = []
    if version.startswith("v2"):
        chunk = int(info.get("chunks_size", 1000))
        metas = _jsonl(folder / "meta" / "episodes.jsonl")
        if not metas:  # episodes.jsonl is optional for us: the tables themselves say which episodes exist
            metas = [{"episode_index": int(p.stem.split("_")[-1])} for p in sorted((folder / "data").glob("chunk-*/episode_*.parquet"))]
        for m in sorted(metas, key=lambda m: m["episode_index"]):
            i = int(m["episode_index"])
            path = folder / info["data_path"].format(episode_chunk=i // chunk, episode_index=i)
            if not path.is_file():
                raise DatasetError(f"{folder}: episode {i}'s table is missing: {path}")
            out.append((m, pq.read_table(path)))
    else:
        files = sorted((folder / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{folder}: LeRobot v3.0 dataset without meta/episodes/chunk-*/file-*.parquet")
        metas = [row for f in files for row in pq.read_table(f).to_pylist()]
        tables: dict[Path, Any] = {}
        for m in sorted(metas, key=lambda m: m["episode_index"]):
            path = folder / info["data_path"].format(chunk_index=int(m["data/chunk_index"]), file_index=int(m["data/file_index"]))
            if path not in tables:
                if not path.is_file():
                    raise DatasetError(f"{folder}: episode {m['episode_index']}'s table is missing: {path}")
                tables[path] = pq.read_table(path)
            table = tables[path]
            rows = table.filter(pc.equal(table.column("episode_index"), int(m["episode_index"])))
            out.append((m, rows))
    if not out:
        raise DatasetError(f"{folder}: LeRobot dataset with no episodes")
    for m, t in out:
        if len(t) == 0:
            raise DatasetError(f"{folder}: episode {m['episode_index']} has no rows")
    return out


def _video_path(info: dict[str, Any], version: str, cam: str, meta: dict) -> str:
    template = info.get("video_path")
    if not template:
        raise DatasetError(f"camera '{cam}' is a video feature but info.json has no 'video_path'")
    if version.startswith("v2"):
        i = int(meta["episode_index"])
        return template.format(episode_chunk=i // int(info.get("chunks_size", 1000)), video_key=cam, episode_index=i)
    return template.format(video_key=cam, chunk_index=int(meta[f"videos/{cam}/chunk_index"]),
                           file_index=int(meta[f"videos/{cam}/file_index"]))  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _matrix(table, column: str, where: str) -> np.ndarray:
    values = table.column(column).to_pylist()
    try:
        arr = np.asarray(values, np.float32)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: column '{column}' is not numeric ({e})") from e
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DatasetError(f"{where}: column '{column}' must hold vectors, got shape {arr.shape}")
    return arr


def _table_images(table, column: str, where: str) -> np.ndarray:
    from PIL import Image

    frames = []
    for cell in table.column(column).to_pylist():
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise DatasetError(f"{where}: image column '{column}' has a row without image bytes")
        frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(frames)


def decode_video(path: Path, fps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of `path` as (N, H, W, 3) uint8 RGB and its presentation time in seconds.
    A stream whose frame rate differs from `fps` (info.json's; None: any) is bad data."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise DatasetError(f"{path}: cannot be opened as a video ({e})") from e
    with container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if fps and rate and abs(float(rate) - fps) > 0.01 * fps:
            raise DatasetError(f"{path}: video is at {float(rate):.3g} fps but meta/info.json says {fps:.3g}")
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * stream.time_base) if frame.pts is not None else len(times) / float(fps or rate or 1))
    if not frames:
        raise DatasetError(f"{path}: video holds no frames")
    return np.stack(frames), np.asarray(times)


def match_frames(frames: np.ndarray, times: np.ndarray, wanted: np.ndarray, fps: float, where: str,
                 tolerance: float = 0.25) -> np.ndarray:  # fmt: skip
    """The frame nearest to each wanted timestamp; each must be within `tolerance` frame periods."""
    order = np.argsort(times)
    times, frames = times[order], frames[order]
    idx = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1) if len(times) > 1 else np.zeros(len(wanted), int)
    if len(times) > 1:
        left_closer = np.abs(wanted - times[idx - 1]) <= np.abs(wanted - times[idx])
        idx = np.where(left_closer, idx - 1, idx)
    gap = np.abs(times[idx] - wanted)
    bad = gap > tolerance / fps
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(
            f"{where}: no frame at timestamp {wanted[i]:.4f}s (nearest {times[idx[i]]:.4f}s; the video spans "
            f"{times[0]:.4f}-{times[-1]:.4f}s): the video cannot cover the trajectory (shorter, or at another fps)"
        )
    return frames[idx]
