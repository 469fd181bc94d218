"""LeRobot load time against the number of episodes (it must grow linearly: each v3.0 video file
is decoded once for all its episodes and cameras), PyAV's decode rate, and the cache's load time.

    python bench/robot_decode.py                       # 1, 10, 100 episodes, two cameras, v3.0
    python bench/robot_decode.py --episodes 1 10 --steps 100 --size 128 --version v2.1

Synthetic datasets (H.264 MP4s) are written to a temporary folder; writing them is not timed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from lps.data import lerobot, synthetic
from lps.data.robot import RobotDataConfig, load_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--version", default="v3.0", choices=["v2.1", "v3.0"])
    a = p.parse_args()
    cams = tuple(f"cam{i}" for i in range(a.cameras))
    rows = []
    for episodes in a.episodes:
        root = Path(tempfile.mkdtemp(prefix="lps-bench-"))
        try:
            synthetic.lerobot_dataset(root / "ds", a.version, episodes, a.steps, a.size, cams)
            frames, t0 = 0, time.perf_counter()
            for video in sorted((root / "ds" / "videos").rglob("*.mp4")):
                frames += len(lerobot.decode_video(video, None)[0])
            t_decode = time.perf_counter() - t0
            cfg = RobotDataConfig(image_size=0)
            t0 = time.perf_counter()
            data = load_folder(root / "ds", cfg, 5, progress=False)  # decode + write the cache
            t_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            load_folder(root / "ds", cfg, 5, progress=False)  # from the cache
            t_cache = time.perf_counter() - t0
            rows.append({"episodes": episodes, "rows": len(data["actions"]), "frames": frames,
                         "decode_frames_per_s": round(frames / t_decode, 1), "first_load_s": round(t_first, 3),
                         "first_load_ms_per_episode": round(1000 * t_first / episodes, 1),
                         "cache_load_s": round(t_cache, 3)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = (last["first_load_s"] / first["first_load_s"]) / (last["episodes"] / first["episodes"])
        print(f"load time grew {last['first_load_s'] / first['first_load_s']:.1f}x for {last['episodes'] / first['episodes']:.0f}x "
              f"the episodes (1.0 = linear; the fixed start-up cost makes small counts look sub-linear): {growth:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
