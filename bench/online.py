"""Online fine-tuning throughput: environment steps per second with the worker pool.

    python bench/online.py --data-dir /path/to/ogbench/data      # cube-single task 1
    python bench/online.py --workers 2 --envs 4 --env-steps 3000

1. E, the environments alone in `--workers` worker processes, random open-loop chunks of 5
   steps with the per-step records the replay buffer needs;
2. U, the updates alone: quick-preset LPS's offline updates/s (the update the online phase runs);
   while U is below E/1.5 the batch is halved (down to 16), then the networks' width (down to
   2x32), and when U is above E the online phase runs `--utd round(U/E)`, so that E and U/utd
   are within 1.5x (where alternation costs most); `--batch-size` or `--width` fix the setting
   instead (utd still from U/E);
3. X, the whole online phase at that setting, strict alternation and overlap taking turns
   (`--repeats` runs each; `--sync`: strict only): env steps/s of its metrics rows after the
   first (the first holds compilation).
The last line: `online phase (overlap): X env steps/s = R of the slower part (envs alone E,
updates alone U, utd K)`, R = X / min(E, U/utd), the strict line before it; before them, the
most R this machine's cores allow with both parts running at once (the cores the envs kept busy
alone, measured, plus one per update). Timings on a shared machine are noisy: compare figures
from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TASK = "cube-single-play-singletask-task1-v0"
ENV_ID = "cube-single-singletask-task1-v0"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far (Linux /proc; 0 elsewhere)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists():
            fields = stat.read_text().rsplit(")", 1)[1].split()  # from field 3 on (the name may hold spaces)
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / os.sysconf("SC_CLK_TCK")


def bench_env(envs: int, workers: int, env_steps: int, chunk_len: int = 5) -> tuple[float, float]:
    """E, env steps per second of the pool alone, and the cores it kept busy meanwhile (workers
    and the process driving them: CPU seconds per second)."""
    from lps.training.envs import EnvWorkerPool

    pool = EnvWorkerPool(ENV_ID, envs, workers)
    pids = [os.getpid(), *(proc.pid for proc in getattr(pool, "procs", []))]
    rng = np.random.default_rng(0)
    try:
        episode = 0
        pool.reset({k: k for k in range(envs)})
        done, start, cpu = 0, time.perf_counter(), cpu_seconds(pids)
        while done < env_steps:
            outcomes = pool.step_chunks({k: rng.uniform(-1, 1, (chunk_len, 5)) for k in range(envs)})
            done += sum(o.steps for o in outcomes.values())
            ended = {k: envs + episode + k for k, o in outcomes.items() if o.done}
            episode += len(ended)
            if ended:
                pool.reset(ended)
        elapsed = time.perf_counter() - start
        return done / elapsed, (cpu_seconds(pids) - cpu) / elapsed
    finally:
        pool.close()


def core_bound(env_rate: float, env_cores: float, update_rate: float, utd: int) -> float:
    """The most of the slower part the envs and the updates can reach running at once on this
    machine's cores: an env step costs `env_cores`/E core-seconds (as measured alone) and its utd
    updates at least utd/U (one core busy per update, as these small updates on a CPU)."""
    from lps.host import available_cores

    slower = min(env_rate, update_rate / utd)
    return min(1.0, available_cores() / (env_cores / env_rate + utd / update_rate) / slower)


def train_rows(data_dir: str | None, width: int | None = 256, size: str = "quick", **overrides) -> list[dict]:
    """The metrics rows of one LPS run on the task at the preset `size` (in a temporary run dir),
    every network 2 x `width` (None: the preset's own sizes); with `seeds=`, the first seed's rows
    (each holds the program's rate)."""
    from lps.agents import LPSConfig
    from lps.training.config import agent_overrides, preset, with_flags
    from lps.training.loop import train

    cfg, agent_cfg = preset(size, LPSConfig)
    if width is not None:
        agent_cfg = dataclasses.replace(agent_cfg, **agent_overrides({"hidden": (width, width)}, LPSConfig))
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = with_flags(cfg, **{"env": TASK, "data_dir": data_dir, "log_every": 100, "save_every": 0,
                                          "eval_every": 0, "eval_episodes": 0, "run_dir": run_dir,
                                          "progress": False, **overrides})  # fmt: skip
        train("lps", cfg, agent_cfg)
        first = Path(run_dir) / f"seed{cfg.seeds[0]}" if cfg.seeds else Path(run_dir)
        return [json.loads(line) for line in open(first / "metrics.jsonl")]


def median_after_first(rows: list[dict], key: str) -> float:
    """The median of `key` over the rows after the first (which holds compilation)."""
    values = [r[key] for r in rows if key in r][1:]
    return statistics.median(values) if values else float("nan")


def bench_updates(data_dir: str, batch_size: int, width: int, steps: int = 500) -> float:
    """U: gradient updates per second of the offline phase alone (the same update the online
    phase runs), median of the rows after the first (which holds compilation)."""
    return median_after_first(train_rows(data_dir, width, steps=steps, batch_size=batch_size), "steps_per_sec")


def bench_online(data_dir: str | None, envs: int, workers: int, env_steps: int, utd: int, sync: bool,
                 width: int | None = 256, size: str = "quick", **overrides) -> float:  # fmt: skip
    """X: env steps per second of the online phase, median of its rows after the first."""
    rows = train_rows(data_dir, width, size, **{"steps": 100, **overrides}, online_steps=env_steps, online_envs=envs,
                      online_workers=workers, utd=utd, online_sync=sync,
                      online_start_steps=0)  # the phase as it runs once updates start  # fmt: skip
    return median_after_first(rows, "env_steps_per_sec")


def report(sync: bool, rate: float, env_rate: float, update_rate: float, utd: int) -> None:
    """The line of one mode: X and R = X / min(E, U/utd)."""
    mode = "strict alternation" if sync else "overlap"
    print(f"online phase ({mode}): {rate:.0f} env steps/s = {rate / min(env_rate, update_rate / utd):.2f} of the "
          f"slower part (envs alone {env_rate:.0f}, updates alone {update_rate:.0f}, utd {utd})")  # fmt: skip


def balance(env_rate: float, update_rate: float) -> int:
    """The --utd that brings U/utd within 1.5x of E (1 when the updates are the slower part)."""
    return max(1, round(update_rate / env_rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="OGBench play data (default $OGBENCH_DATA_DIR)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--env-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="update batch (default: the quick preset's, halved while U < E/1.5)")  # fmt: skip
    parser.add_argument("--width", type=int, default=None,
                        help="networks 2 x WIDTH (default 256, halved after the batch while U < E/1.5)")  # fmt: skip
    parser.add_argument("--sync", action="store_true", help="strict alternation (--online-sync) only")
    parser.add_argument("--repeats", type=int, default=2,
                        help="online runs per mode, strict and overlap taking turns (medians)")  # fmt: skip
    args = parser.parse_args()
    from lps.agents import LPSConfig
    from lps.training.config import preset

    env_rate, env_cores = bench_env(args.envs, args.workers, args.env_steps)
    print(f"envs alone: {args.envs} envs in {args.workers} workers, random chunks: {env_rate:.0f} env steps/s "
          f"({env_cores:.1f} cores busy)")  # fmt: skip
    batch = args.batch_size or preset("quick", LPSConfig)[0].batch_size
    width = args.width or 256

    def measure() -> float:
        rate = bench_updates(args.data_dir, batch, width)
        print(f"updates alone: LPS 2x{width} nets, batch {batch}: {rate:.0f} updates/s")
        return rate

    update_rate = measure()
    # Slower updates than envs: smaller batches, then narrower nets, until the two are within
    # 1.5x (the balanced regime, where alternation costs most); faster ones: more updates per
    # env step.
    chosen = args.batch_size is not None or args.width is not None
    while not chosen and update_rate * 1.5 < env_rate and (batch > 16 or width > 32):
        if batch > 16:
            batch //= 2
        else:
            width //= 2
        update_rate = measure()
    utd = balance(env_rate, update_rate)
    # Both modes in this run, taking turns: a shared machine's speed drifts between minutes.
    modes = [True] if args.sync else [True, False]
    rates = {sync: [] for sync in modes}
    for _ in range(args.repeats):
        for sync in modes:
            rates[sync].append(bench_online(args.data_dir, args.envs, args.workers, args.env_steps, utd, sync, width,
                                            batch_size=batch))  # fmt: skip
    print(f"(batch {batch}, 2x{width} nets, median of {args.repeats} runs per mode; compare the ratios, not the rates)")
    if env_cores > 0:  # measured (Linux)
        bound = core_bound(env_rate, env_cores, update_rate, utd)
        print(f"this machine's cores allow at most {bound:.2f} of the slower part with both running at once "
              f"(the envs' {env_cores:.1f} cores as measured, one per update)")  # fmt: skip
    for sync in modes:
        report(sync, statistics.median(rates[sync]), env_rate, update_rate, utd)


if __name__ == "__main__":
    main()
