"""Online fine-tuning throughput: environment steps per second with the worker pool.

    python bench/online.py --data-dir /path/to/ogbench/data      # cube-single task 1
    python bench/online.py --workers 2 --envs 4 --env-steps 3000

- env: the environments alone in `--workers` worker processes, random open-loop chunks of 5
  steps with the per-step records the replay buffer needs (the ceiling of the online phase);
- online: the whole online phase of `lps train --online-steps` (acting, the pool, buffer appends,
  `--utd 1` updates of quick-preset LPS): env steps/s of its metrics rows after the first (the
  first holds compilation).
Timings on a shared machine are noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TASK = "cube-single-play-singletask-task1-v0"
ENV_ID = "cube-single-singletask-task1-v0"


def bench_env(envs: int, workers: int, env_steps: int, chunk_len: int = 5) -> float:
    from lps.training.envs import EnvWorkerPool

    pool = EnvWorkerPool(ENV_ID, envs, workers)
    rng = np.random.default_rng(0)
    try:
        episode = 0
        pool.reset({k: k for k in range(envs)})
        done, start = 0, time.perf_counter()
        while done < env_steps:
            outcomes = pool.step_chunks({k: rng.uniform(-1, 1, (chunk_len, 5)) for k in range(envs)})
            done += sum(o.steps for o in outcomes.values())
            ended = {k: envs + episode + k for k, o in outcomes.items() if o.done}
            episode += len(ended)
            if ended:
                pool.reset(ended)
        return done / (time.perf_counter() - start)
    finally:
        pool.close()


def bench_online(data_dir: str, envs: int, workers: int, env_steps: int) -> tuple[float, list[float]]:
    from lps.agents import LPSConfig
    from lps.training.config import preset
    from lps.training.loop import train

    cfg, agent_cfg = preset("quick", LPSConfig)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = dataclasses.replace(cfg, env=TASK, data_dir=data_dir, steps=100, log_every=100, save_every=0,
                                  eval_every=0, eval_episodes=0, run_dir=run_dir, progress=False,
                                  online_steps=env_steps, online_envs=envs, online_workers=workers)  # fmt: skip
        start = time.perf_counter()
        train("lps", cfg, agent_cfg)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    rates = [r["env_steps_per_sec"] for r in rows if "env_steps_per_sec" in r][1:]
    return wall, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="OGBench play data (default $OGBENCH_DATA_DIR)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--env-steps", type=int, default=3000)
    parser.add_argument("--only", choices=("env", "online"), default=None)
    args = parser.parse_args()
    if args.only in (None, "env"):
        rate = bench_env(args.envs, args.workers, args.env_steps)
        print(f"env: {args.envs} envs in {args.workers} workers, random chunks: {rate:.0f} env steps/s")
    if args.only in (None, "online"):
        wall, rates = bench_online(args.data_dir, args.envs, args.workers, args.env_steps)
        median = statistics.median(rates) if rates else float("nan")
        print(f"online: {args.envs} envs in {args.workers} workers, utd 1, quick LPS: {median:.0f} env steps/s "
              f"(median of {len(rates)} rows; whole run incl. loading and compiling {wall:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
