"""`lps report` (tables and curves from finished runs) and `lps toy` (the paper's analysis figures)."""

from __future__ import annotations

import argparse
import os

from lps.cli.args import seed_arg
from lps.data import toy
from lps.experiments import toy_analysis as analysis
from lps.experiments.report import report


def toy_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lps toy", description="Toy bandits and the paper's analysis figures.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the toy tasks")
    f2 = sub.add_parser("figure2", help="dataset vs policy samples: QC-FQL at several alphas and LPS")
    f2.add_argument("--alphas", type=float, nargs="+", default=[0.03, 3.0, 300.0])
    f3 = sub.add_parser("figure3", help="pulled-back critic vs a distilled latent critic: gradient cosine")
    for f in (f2, f3):
        f.add_argument("--task", default="four-gaussians", choices=list(toy.TASKS))
        f.add_argument("--steps", type=int, default=3000)
        f.add_argument("--seed", type=seed_arg, default=0)
        f.add_argument("--out", default=None, help="default: runs/toy/<figure>")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for name, task in toy.TASKS.items():
            print(f"toy-{name:16s} {task.dim:3d}-D actions, best action starts {task.best[:2].round(3).tolist()}")
        return 0
    out = a.out or f"runs/toy/{a.cmd}"
    if a.cmd == "figure2":
        numbers = analysis.figure2(a.task, tuple(a.alphas), a.steps, a.seed, out)
        for name, n in numbers.items():
            print(f"{name:22s} " + "  ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in n.items()))
    else:
        numbers = analysis.figure3(a.task, a.steps, a.seed, out)
        print("  ".join(f"{k}={v:.3f}" for k, v in numbers.items()))
    print(f"[lps] figure written to {out}/{a.cmd}-{a.task}.png")
    return 0


def report_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lps report",
        description="Success tables with 95 % bootstrap CIs, IQM, learning curves and alpha sensitivity "
        "from every run below RUNS_DIR (needs lps[report]).",
    )
    p.add_argument("runs_dir", help="a folder holding run directories at any depth")
    p.add_argument("--out", default=None, help="default: RUNS_DIR/report")
    p.add_argument("--reps", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=seed_arg, default=0, help="bootstrap seed")
    p.add_argument("--final", choices=["last", "max"], default="last", help="a run's score: last or best evaluation")
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error("--reps must be at least 1")
    out = a.out and os.path.expanduser(a.out)
    result = report(os.path.expanduser(a.runs_dir), out=out, reps=a.reps, seed=a.seed, final=a.final)
    print(result["markdown"])
    print(f"[lps] wrote {len(result['files'])} files to {result['files'][-1].parent}")
    return 0
