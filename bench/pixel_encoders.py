"""Pixels before and after per-network encoders (issue 18, fix 1), on the same data and seeds.

    python bench/pixel_encoders.py                         # CPU scale: 10 episodes, 1000 steps, seed 0
    python bench/pixel_encoders.py --episodes 1000 --steps 100000 --seeds 0 1 2 --agents lps qc-fql   # a GPU box

"before" is `--shared-encoder` (one encoder trained by every loss: the actor loss reaches the
critic's features), "after" the default (one encoder per network, a Polyak target encoder, as the
release). Both train from the same generated visual-cube-single data with the same seeds; the
table gives evaluation success beside the validation split's `val/` metrics at the last step.
Runs with a summary.json are skipped, so an interrupted comparison resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TASK = "visual-cube-single-play-singletask-task1-v0"
VARIANTS = {"before (--shared-encoder)": ["--shared-encoder"], "after (per-network)": []}
COLUMNS = ("eval/success", "val/bc_loss", "val/td_error", "val/q_gap", "steps_per_sec")


def lps(*args) -> None:
    cmd = [sys.executable, "-m", "lps.cli", *map(str, args)]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def last_row(run: Path, key: str) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in reversed(rows) if key in r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="runs/pixel-data")
    p.add_argument("--out", default="runs/pixel-encoders")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--agents", nargs="+", default=["lps"])
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()

    data = Path(a.data_dir)
    if not (data / "visual-cube-single-play-v0.npz").exists():
        lps("data", "generate", "visual-cube-single", "--episodes", a.episodes, "--workers", a.workers,
            "--data-dir", data)  # fmt: skip
    log_every = min(500, a.steps)
    table = []
    for agent in a.agents:
        for variant, flags in VARIANTS.items():
            for seed in a.seeds:
                run = Path(a.out) / agent / variant.split()[0] / f"seed{seed}"
                if not (run / "summary.json").exists():
                    lps("train", "--agent", agent, "--preset", "cpu-pixels", "--env", TASK, "--data-dir", data,
                        "--steps", a.steps, "--log-every", log_every, "--eval-every", a.steps, "--save-every", a.steps,
                        "--eval-episodes", a.eval_episodes, "--seed", seed, "--run-dir", run, "--overwrite",
                        "--no-progress", *flags)  # fmt: skip
                evaluated, trained = last_row(run, "eval/success"), last_row(run, "steps_per_sec")
                values = {**trained, **evaluated}
                table.append([agent, variant, str(seed), *(f"{values.get(k, float('nan')):.3f}" for k in COLUMNS)])
    print(f"\n{TASK}, {a.episodes} episodes of data, {a.steps} steps, {a.eval_episodes} evaluation episodes\n")
    print("| agent | encoders | seed | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (3 + len(COLUMNS)))
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
