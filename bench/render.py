"""Rendering throughput of OGBench's visual envs (64x64 RGB), the cost of pixel data and evaluation.

    python bench/render.py                                   # visual-cube-single, 3 measurements
    python bench/render.py --env visual-scene --frames 50 --workers 1 2
    MUJOCO_GL=osmesa python bench/render.py                  # compare backends

- render: frames/s of `env.render()` alone (the scene as it stands), in one process, and its CPU
  time per frame (independent of the machine's load: 1 / it is the rate on an idle core).
- step: env steps/s of the visual env with random actions (physics + one frame per step), and of
  its state twin (physics only): the difference is what rendering costs.
- generate: frames/s of `lps data generate` (oracle play data, episodes of --episode-steps) with
  each --workers count, end to end (spawned workers, compression, the write).
Prints the GL backend, CPU count and load average: software rendering shares the CPU with
everything else, so figures from a busy machine are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from lps.data import tasks
from lps.data.render import measure_render_rate, require_renderer


def _env(env_id: str, **kwargs):
    import gymnasium

    return gymnasium.make(env_id, **kwargs)


def bench_step(env_id: str, steps: int) -> float:
    env = _env(env_id, max_episode_steps=10**6)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, 5).astype(np.float32))
    return steps / (time.perf_counter() - start)


def bench_generate(env: str, workers: int, episodes: int, episode_steps: int) -> float:
    from lps.data.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train, val = generate(env, tmp, episodes=episodes, workers=workers, progress=False,
                              max_episode_steps=episode_steps)  # fmt: skip
        elapsed = time.perf_counter() - start
        rows = sum(len(np.load(p)["terminals"]) for p in (train, val))
    return rows / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="visual-cube-single", choices=tasks.VISUAL_ENVS)
    p.add_argument("--frames", type=int, default=30, help="frames (or steps) per render/step measurement")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts for the generate measurement")
    p.add_argument("--episodes", type=int, default=2, help="train episodes per generate measurement (+1 val)")
    p.add_argument("--episode-steps", type=int, default=20)
    p.add_argument("--only", nargs="*", choices=["render", "step", "generate"], default=["render", "step", "generate"])
    a = p.parse_args()

    tasks.require_ogbench()
    backend = require_renderer(a.env)
    env_id = f"{a.env}-singletask-task1-v0"
    print(json.dumps({"backend": backend, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}))
    results = {}
    if "render" in a.only:
        results["render_frames_per_s"], cpu_s = measure_render_rate(env_id, a.frames)
        results["render_cpu_ms_per_frame"] = 1000 * cpu_s
        results["render_frames_per_s_per_idle_core"] = 1 / cpu_s
    if "step" in a.only:
        results["visual_env_steps_per_s"] = bench_step(env_id, a.frames)
        results["state_env_steps_per_s"] = bench_step(env_id.removeprefix("visual-"), 10 * a.frames)
    if "generate" in a.only:
        for w in a.workers:
            results[f"generate_frames_per_s_{w}_workers"] = bench_generate(a.env, w, a.episodes, a.episode_steps)
    results = {k: round(v, 2) for k, v in results.items()}
    results["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps({"env": a.env, **results}))
    if "render_frames_per_s_per_idle_core" in results:
        hours = 1100 * 1001 / (results["render_frames_per_s_per_idle_core"] * (os.cpu_count() or 1)) / 3600
        print(f"rendering alone, the official 1000 (+100 val) episodes (1.1M frames) take {hours:.1f} h "
              f"on {os.cpu_count()} idle cores")  # fmt: skip


if __name__ == "__main__":
    main()
