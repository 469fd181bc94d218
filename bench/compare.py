"""Run agents x tasks x seeds one after another and print a Markdown table of final success.

    python bench/compare.py --agents lps qc-fql --tasks cube-single-play-singletask-task1-v0 \
        --seeds 0 1 --out runs/compare -- --preset quick --steps 20000

Everything after `--` is passed to `lps train` for every run (preset and config flags). Runs
whose `summary.json` exists are skipped, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", nargs="+", required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default="runs/compare")
    a = p.parse_args(argv)

    for task in a.tasks:
        for agent in a.agents:
            for seed in a.seeds:
                run_dir = Path(a.out) / task / agent / f"seed{seed}"
                if (run_dir / "summary.json").exists():
                    continue
                cmd = ["lps", "train", "--agent", agent, *extra, "--env", task, "--seed", str(seed)]
                cmd += ["--run-dir", str(run_dir), "--overwrite", "--no-progress"]
                print(" ".join(cmd), flush=True)
                start = time.perf_counter()
                done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
                print(f"  -> exit {done.returncode} in {time.perf_counter() - start:.0f}s: {last}", flush=True)

    print(table(a.out, a.agents, a.tasks, a.seeds))


def table(out: str, agents: list[str], tasks: list[str], seeds: list[int]) -> str:
    lines = ["| agent | " + " | ".join(tasks) + " | mean wall time |", "|---|" + "---|" * (len(tasks) + 1)]
    for agent in agents:
        cells, walls = [], []
        for task in tasks:
            results = []
            for seed in seeds:
                path = Path(out) / task / agent / f"seed{seed}" / "summary.json"
                if path.exists():
                    s = json.loads(path.read_text())
                    results.append(s["final_success"])
                    walls.append(s["wall_time_s"])
            scores = [r for r in results if r is not None]
            if scores:
                spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
                cells.append(f"{statistics.mean(scores):.2f}{spread} ({', '.join(f'{x:.2f}' for x in scores)})")
            else:
                cells.append("—")
        wall = f"{statistics.mean(walls) / 60:.1f} min" if walls else "—"
        lines.append(f"| {agent} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
