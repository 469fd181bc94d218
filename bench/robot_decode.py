"""LeRobot video decode throughput (frames/s, PyAV on this CPU) and the cache's load time for the
same data: a synthetic v3.0 dataset (H.264 MP4s written here) read twice by `load_folder`.

    python bench/robot_decode.py --episodes 10 --steps 100 --size 128 --cameras 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from lps.data import lerobot
from lps.data.robot import RobotDataConfig, load_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--version", default="v3.0", choices=["v2.1", "v3.0"])
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lps-bench-"))
    try:
        cams = tuple(f"cam{i}" for i in range(a.cameras))
        lerobot.synthetic_dataset(root / "ds", a.version, a.episodes, a.steps, a.size, cams)
        cfg = RobotDataConfig(image_size=0)
        t0 = time.perf_counter()
        decode = lerobot.decode_video
        frames = 0
        for video in sorted((root / "ds" / "videos").rglob("*.mp4")):
            frames += len(decode(video, 10)[0])
        t_decode = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = load_folder(root / "ds", cfg, 5, progress=False)  # decode + write the cache
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_folder(root / "ds", cfg, 5, progress=False)  # from the cache
        t_cache = time.perf_counter() - t0
        print(json.dumps({"frames": frames, "decode_frames_per_s": round(frames / t_decode, 1),
                          "first_load_s": round(t_first, 3), "cache_load_s": round(t_cache, 3),
                          "rows": len(data["actions"]), "image": list(data["observations"]["image"].shape[1:])}))  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
