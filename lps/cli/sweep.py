"""`lps sweep`: a grid of `lps train` runs from a sweep file, a named suite or flags (lps.experiments.sweep)."""

from __future__ import annotations

import argparse

from lps.experiments.suites import get_suite
from lps.experiments.sweep import SweepSpec, checked, read_spec_file, run_sweep

DESCRIPTION = "Sweeps: agents x tasks x seeds x config grids, run as `lps train` subprocesses."


def sweep_command(argv: list[str]) -> int:
    spec, a = parse_args(argv)
    results = run_sweep(
        spec, a.workers, a.ray, a.gpus_per_task, a.cpus_per_task, not a.no_group_seeds, a.dry_run, gpus=a.gpus
    )
    return int(any(r.status == "failed" for r in results))


def parse_args(argv: list[str]):
    """`lps sweep` arguments -> (SweepSpec, argparse namespace); everything after `--` is train args."""
    split = argv.index("--") if "--" in argv else len(argv)
    argv, train_args = argv[:split], argv[split + 1 :]
    p = _parser()
    a = p.parse_args(argv)
    if a.suite and a.file:
        p.error("give a sweep file or --suite, not both")
    if a.gpus < 0:
        p.error(f"--gpus must be >= 0, got {a.gpus}")
    data, origin = _spec_data(p, a)
    if a.grid:
        data["grid"] = _grid(p, a.grid, data, origin)
    data["train_args"] = [*checked({"train_args": data.get("train_args")}, origin)["train_args"], *train_args]
    if not data.get("agents") or not data.get("tasks"):
        p.error("give --agents and --tasks (or a sweep file with them)")
    return SweepSpec(**checked(data, origin)), a


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lps sweep",
        description=DESCRIPTION + " Arguments after `--` go to every `lps train`. Flags override the keys of FILE.",
    )
    p.add_argument("file", nargs="?", help="a YAML or TOML sweep (keys: agents, tasks, seeds, grid, train_args, ...)")
    p.add_argument("--suite", help="a named sweep of the paper: ogbench-state (Table I) or ogbench-ablations")
    p.add_argument("--gpus", type=int, default=0, help="GPUs of this machine: each concurrent seed-group gets one")
    p.add_argument("--agents", nargs="+")
    p.add_argument("--tasks", nargs="+")
    p.add_argument("--seeds", nargs="+", help="e.g. 0 1 2 or 0,1,2")
    p.add_argument("--grid", nargs="+", action="extend", metavar="FIELD=V1,V2", help="e.g. alpha=1,3,10")
    p.add_argument("--out", help="default runs/sweep")
    p.add_argument("--workers", type=int, help="local processes at once (default 1: training uses every core)")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: auto, ray://host:10001, or local")
    p.add_argument("--gpus-per-task", type=float, default=0, help="Ray: GPUs per task (default 0: CPU)")
    p.add_argument("--cpus-per-task", type=float, default=1, help="Ray: CPUs per task (default 1)")
    p.add_argument("--no-group-seeds", action="store_true", help="one process per seed instead of per seed-group")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    return p


def _spec_data(p: argparse.ArgumentParser, a: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """The sweep's keys from FILE or --suite, then the flags', and the file or flag each came from (for errors)."""
    data = read_spec_file(a.file) if a.file else {}
    origin = {key: str(a.file) for key in data}
    if a.suite:
        try:
            suite = get_suite(a.suite)
        except ValueError as e:
            p.error(str(e))
        data = dict(agents=list(suite.agents), tasks=list(suite.tasks), seeds=list(suite.seeds), out=suite.out,
                    train_args=list(suite.train_args), variants=[dict(v) for v in suite.variants])  # fmt: skip
        origin = {key: f"--suite {a.suite}" for key in data}
    for key in ("agents", "tasks", "out", "workers"):
        if getattr(a, key) is not None:
            data[key], origin[key] = getattr(a, key), f"--{key}"
    if a.seeds is not None:
        data["seeds"], origin["seeds"] = [s for arg in a.seeds for s in arg.split(",") if s], "--seeds"
    return data, origin


def _grid(p: argparse.ArgumentParser, items: list[str], data: dict, origin: dict[str, str]) -> dict[str, list[str]]:
    """The file's grid, checked in shape with its name, then the --grid flags' fields added (or replaced)."""
    grid = checked({"grid": data.get("grid")}, origin)["grid"]
    origin.update({f"grid.{name}": origin.get("grid", "sweep") for name in grid})
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            p.error(f"--grid takes FIELD=V1,V2,..., got {item!r}")
        name = name.replace("-", "_")
        grid[name], origin[f"grid.{name}"] = values.split(","), f"--grid {item}"
    return grid
