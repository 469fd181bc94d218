"""Appendix A's protocol (1M offline gradient steps, then 1M online env steps) on this machine:
what each part runs at and how long the whole would take, for one seed and for several.

    python bench/protocol.py --data-dir DIR                  # paper size, 16 workers, 8 seeds (a GPU box)
    python bench/protocol.py --data-dir DIR --size quick --workers 2 --envs 4 --seeds 2 \\
        --steps 600 --env-steps 600 --eval-every 200 --eval-episodes 4   # a smoke run on a laptop

All on cube-single task 1 (`--data-dir`: its OGBench play data, `lps data generate cube-single`):
1. offline: LPS updates/s at `--size` (paper: the paper's networks and batch 256), one seed, and
   `--seeds` seeds vmapped in one program (`lps train --seeds ...`);
2. evaluation: env steps/s of a `--eval-episodes` evaluation with `--workers` worker processes
   (issue 7's figure), then the `--seeds` run again with an evaluation every `--eval-every` steps
   on a host snapshot beside it (`--eval-async true`) and its updates/s against (1)'s;
3. online: E, the envs alone (`--envs` in `--workers` workers), then the online phase at utd 1 in
   strict alternation and in overlap: X env steps/s and R = X / min(E, U);
4. the projected wall time of the protocol: 1M / U offline + 1M / X online for one seed; for
   `--seeds` seeds the offline steps vmapped in one program and the online phases one run per seed
   (`--online-steps` trains one seed per run) one after another on this device.
Rates are medians of the metrics rows after the first (which holds compilation). Timings on a
shared machine are noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse

from online import bench_env, bench_online, median_after_first, report, train_rows  # bench/online.py

PROTOCOL_STEPS = 1_000_000  # appendix A: gradient steps offline, then env steps online


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="OGBench play data (default $OGBENCH_DATA_DIR)")
    parser.add_argument("--size", default="paper", choices=["paper", "quick"], help="the preset's nets and batch")
    parser.add_argument("--workers", type=int, default=16, help="env worker processes (evaluation and online)")
    parser.add_argument("--envs", type=int, default=16, help="environments played side by side online")
    parser.add_argument("--seeds", type=int, default=8, help="seeds vmapped in one program")
    parser.add_argument("--steps", type=int, default=20_000, help="offline gradient steps per measurement")
    parser.add_argument("--log-every", type=int, default=1000, help="updates per dispatch and metrics row")
    parser.add_argument("--env-steps", type=int, default=20_000, help="online env steps per mode")
    parser.add_argument("--eval-every", type=int, default=5000, help="gradient steps between evaluations in (2)")
    parser.add_argument("--eval-episodes", type=int, default=50)
    args = parser.parse_args()
    counts = (args.workers, args.envs, args.seeds, args.eval_episodes)
    if min(counts) < 1 or min(args.steps, args.env_steps) < 2 * args.log_every:
        parser.error("--workers, --envs, --seeds and --eval-episodes must be >= 1, and --steps and --env-steps "
                     ">= 2 x --log-every (the first metrics row holds compilation)")  # fmt: skip
    common = dict(log_every=args.log_every, eval_workers=args.workers)
    seeds = tuple(range(args.seeds))

    # 1. offline
    one = median_after_first(train_rows(args.data_dir, None, args.size, steps=args.steps, **common), "steps_per_sec")
    print(f"offline, 1 seed: {one:.0f} updates/s ({args.size} size)")
    together = train_rows(args.data_dir, None, args.size, steps=args.steps, seeds=seeds, **common)
    many = median_after_first(together, "steps_per_sec")  # a seed's rows carry the program's rate
    print(f"offline, {args.seeds} seeds vmapped: {many:.0f} updates/s per seed, {many * args.seeds:.0f} in all "
          f"({many * args.seeds / one:.2f}x one seed)")  # fmt: skip

    # 2. evaluation alone (at the end of a one-dispatch run), then beside the seeds' training
    rows = train_rows(args.data_dir, None, args.size, steps=args.log_every, eval_episodes=args.eval_episodes,
                      eval_async="false", **common)  # fmt: skip
    eval_rate = [r["eval/env_steps_per_sec"] for r in rows if "eval/env_steps_per_sec" in r][-1]
    print(f"evaluation: {args.eval_episodes} episodes in {args.workers} workers: {eval_rate:.0f} env steps/s")
    beside = train_rows(args.data_dir, None, args.size, steps=args.steps, seeds=seeds, eval_every=args.eval_every,
                        eval_episodes=args.eval_episodes, eval_async="true", **common)  # fmt: skip
    evals = [r for r in beside if "eval/success" in r]
    with_eval = median_after_first(beside, "steps_per_sec")
    print(f"{args.seeds} seeds with an evaluation every {args.eval_every} steps beside them (--eval-async true, "
          f"{len(evals)} evaluations): {with_eval:.0f} updates/s per seed = {with_eval / many:.2f} of "
          "without")  # fmt: skip

    # 3. online: the envs alone, then the phase in both modes
    env_rate, env_cores = bench_env(args.envs, args.workers, args.env_steps)
    print(f"envs alone: {args.envs} envs in {args.workers} workers, random chunks: {env_rate:.0f} env steps/s "
          f"({env_cores:.1f} cores busy)")  # fmt: skip
    online = {}
    for sync in (True, False):
        online[sync] = bench_online(args.data_dir, args.envs, args.workers, args.env_steps, 1, sync, None, args.size,
                                    steps=args.log_every, **common)  # fmt: skip
        report(sync, online[sync], env_rate, one, 1)

    # 4. the protocol's wall time at these rates
    offline_one, online_one = PROTOCOL_STEPS / one, PROTOCOL_STEPS / online[False]
    offline_many, online_many = PROTOCOL_STEPS / many, args.seeds * online_one
    print(f"appendix A (1M offline + 1M online), 1 seed: {hours(offline_one)} + {hours(online_one)} "
          f"= {hours(offline_one + online_one)}")  # fmt: skip
    print(f"appendix A, {args.seeds} seeds (offline vmapped, online one run per seed after another): "
          f"{hours(offline_many)} + {args.seeds} x {hours(online_one)} = {hours(offline_many + online_many)}")


if __name__ == "__main__":
    main()
