"""Sweeps: agents x tasks x seeds x config grids, run as `lps train` subprocesses; see
docs/sweeps-and-reports.md.

    runs = expand(spec)                       # one RunSpec per seed-group (or per seed)
    results = run_sweep(spec, workers=1)      # locally, or with ray_address="auto" on Ray

Each run lives in `OUT/<task>/<agent>[-field=value...]/seed<k>`. The seeds of one (agent, task,
config) train together in one `lps train --seeds ...` process (vmapped). A run whose
`summary.json` exists is skipped, so re-running a sweep resumes it; a run directory left without
one (killed) is restarted from scratch with `--overwrite`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import os
import queue
import re
import shlex
import subprocess
import sys
import time
import tomllib
import types
import typing
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lps.agents import REGISTRY, check_agent, config_class
from lps.data.generate import dataset_paths, generate
from lps.data.tasks import default_data_dir
from lps.experiments.suites import envs_of
from lps.training.config import PRESETS, TrainConfig, flag_types, flat

SUMMARY_JSON, LOG = "summary.json", "sweep.log"
RESERVED = {
    "agent": "--agents",
    "env": "--tasks",
    "seed": "--seeds",
    "seeds": "--seeds",
    "run_dir": "--out",
    "resume": "(a sweep resumes by itself)",
}
TAIL_LINES = 15


@dataclasses.dataclass
class SweepSpec:
    agents: list[str]
    tasks: list[str]
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    grid: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """field -> values; a value with spaces is several tokens (`base_hidden: "32 32"` or [32, 32])."""
    train_args: list[str] = dataclasses.field(default_factory=list)
    """Passed to every `lps train` (flags of fields an agent lacks are dropped for that agent)."""
    out: str = "runs/sweep"
    workers: int = 1
    variants: list[dict[str, str]] = dataclasses.field(default_factory=lambda: [{}])
    """Config overrides applied one at a time (each crossed with the grid), e.g. ablations."""

    def __post_init__(self):
        # Checked (and put in canonical form) before any run starts; load_spec and lps.cli.sweep check
        # first with the file or flag each key came from, so their errors name it.
        for key, value in checked({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}).items():
            setattr(self, key, value)


@dataclasses.dataclass
class RunSpec:
    agent: str
    task: str
    seeds: tuple[int, ...]
    overrides: dict[str, str]
    run_dir: str
    """The seed-group's directory; seed k's run is `run_dir/seed<k>`."""
    train_args: tuple[str, ...] = ()

    def seed_dir(self, seed: int) -> Path:
        return Path(self.run_dir) / f"seed{seed}"

    def args(self) -> list[str]:
        """The arguments of `lps ...` that train this run (grid values come last and win)."""
        grid = []
        for name, value in self.overrides.items():
            if value.lower() in ("true", "false") and isinstance(_field_defaults().get(name), bool):
                grid.append(f"--{'' if value.lower() == 'true' else 'no-'}{_flag(name)}")
            else:
                grid += [f"--{_flag(name)}", *value.split()]
        quiet = [] if {"--progress", "--no-progress"} & set(self.train_args) else ["--no-progress"]
        run = ["train", "--agent", self.agent, "--env", self.task, "--seeds", *map(str, self.seeds)]
        return [*run, "--run-dir", self.run_dir, "--overwrite", *quiet, *self.train_args, *grid]


@dataclasses.dataclass
class Result:
    run: RunSpec
    seed: int
    status: str  # finished | skipped | failed | planned (dry run)
    wall_s: float | None = None
    returncode: int | None = None
    log_tail: str = ""

    @property
    def run_dir(self) -> Path:
        return self.run.seed_dir(self.seed)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _value(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def checked(data: dict, origin: dict[str, str] | None = None) -> dict:
    """The keys of a sweep (SweepSpec's fields, any subset) checked and in canonical form, before any
    run starts: agents and tasks lists of names, seeds non-negative integers, grid a mapping of
    config field -> list of values of the field's type, train_args a list of strings, workers >= 1.
    A scalar where a list belongs is a one-element list (a string is one value, never its letters;
    a train_args string is split as a shell would). `origin` maps a key (or `grid.FIELD`) to the
    file or flag it came from, which every error names; a ValueError is one line."""
    origin = origin or {}

    def where(key: str) -> str:
        return origin.get(key) or origin.get(key.split(".")[0]) or "sweep"

    out = dict(data)
    for key in ("agents", "tasks"):
        if key in data:
            out[key] = _names(data[key], where(key), key)
    if "seeds" in data:
        out["seeds"] = _seeds(data["seeds"], where("seeds"))
    if "train_args" in data:
        out["train_args"] = _args(data["train_args"], where("train_args"))
    if "workers" in data:
        w = data["workers"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"{where('workers')}: workers is {w!r}; expected an integer >= 1 (processes at once)")
    if "out" in data and not (isinstance(data["out"], str) and data["out"].strip()):
        raise ValueError(f"{where('out')}: out is {data['out']!r}; expected a folder path (a string)")
    if "grid" in data:
        out["grid"] = _grid(data["grid"], where)
    if "variants" in data:
        out["variants"] = _variants(data["variants"], where("variants"))
    for key in ("agents", "tasks", "seeds"):
        if key in out and not out[key]:
            raise ValueError(f"{where(key)}: {key} is empty; a sweep needs at least one agent, one task and one seed")
    if "agents" in out:
        for agent in out["agents"]:
            try:
                check_agent(agent)
            except ValueError as e:
                raise ValueError(f"{where('agents')}: {e}") from None
        for name, values in out.get("grid", {}).items():
            _check_field(name, values, out["agents"], where(f"grid.{name}"), "grid field")
        for variant in out.get("variants", []):
            for name, value in variant.items():
                _check_field(name, [value], out["agents"], where("variants"), "variant field")
    return out


def _grid(grid, where) -> dict[str, list]:
    """A sweep's grid: config field -> a list of values (a scalar is one value), each checked."""
    grid = {} if grid is None else grid
    if not isinstance(grid, dict):
        raise ValueError(f"{where('grid')}: grid is {grid!r}; expected a mapping of config field -> list of "
                         "values, e.g. grid: {alpha: [1, 3, 10]}")  # fmt: skip
    out = {}
    for name, values in grid.items():
        field = str(name).replace("-", "_")
        at = where(f"grid.{field}")
        if values is None or (isinstance(values, (list, tuple)) and not values):
            raise ValueError(f"{at}: grid field {field!r} has no values; expected a list such as [1, 3, 10]")
        values = values if isinstance(values, (list, tuple)) else [values]  # a scalar: one value
        out[field] = [_grid_value(v, at, f"grid field {field!r}") for v in values]
    return out


def _variants(variants, at: str) -> list[dict]:
    """A sweep's variants: a list of mappings field -> value (none: one empty variant)."""
    variants = variants or [{}]
    if not isinstance(variants, (list, tuple)) or not all(isinstance(d, dict) for d in variants):
        raise ValueError(f"{at}: variants is {variants!r}; expected a list of mappings "
                         "field -> value, e.g. [{geometry: normal}]")  # fmt: skip
    return [{str(k).replace("-", "_"): _grid_value(v, at, f"variant field {k!r}") for k, v in d.items()} for d in variants]


def _names(value, at: str, key: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in values):
        example = "lps, bc-fm" if key == "agents" else "toy-bandit"
        raise ValueError(f"{at}: {key} is {value!r}; expected a list of names, e.g. [{example}]")
    return list(values)


def _seeds(value, at: str) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]  # a scalar seed: one seed
    seeds = []
    for v in values:
        if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{at}: seed {v!r} is not a seed; seeds are non-negative integers, e.g. [0, 1, 2]")
        seeds.append(v)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{at}: seeds must be distinct, got {seeds}")
    return seeds


def _args(value, at: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # one string of arguments: split as a shell would, never into letters
        try:
            return shlex.split(value)
        except ValueError as e:
            raise ValueError(f"{at}: train_args {value!r} cannot be split into arguments ({e})") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{at}: train_args is {value!r}; expected a list of strings, e.g. [--steps, '1000']")
    for v in value:  # a YAML number (`[--steps, 1000]`) is that number's text
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ValueError(f"{at}: train_args holds {v!r}; expected a list of strings, e.g. [--steps, '1000']")
    return [str(v) for v in value]


def _grid_value(v, at: str, what: str) -> str:
    """One value of a grid field (or variant) as text; a list is several tokens (a tuple field)."""
    parts = v if isinstance(v, (list, tuple)) else [v]
    if any(isinstance(p, (list, tuple, dict, set)) for p in parts) or isinstance(v, (dict, set)):
        raise ValueError(f"{at}: {what} has value {v!r}; expected a number, a word or a list of them (a tuple field)")
    return _value(v)


@functools.cache
def _field_types(agents: tuple[str, ...]) -> dict[str, list]:
    """Config field -> its types in TrainConfig and in the given agents' configs (which may differ)."""
    out: dict[str, list] = {name: [tp] for name, tp in flag_types().items()}  # TrainConfig's, by flag name
    for cls in dict.fromkeys(config_class(a) for a in agents):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] not in out.setdefault(f.name, []):
                out[f.name].append(hints[f.name])
    return out


def _check_field(name: str, values: list[str], agents: list[str], at: str, what: str) -> None:
    if name in RESERVED:
        raise ValueError(f"{at}: {what} {name!r} is set by the sweep: use {RESERVED[name]}")
    types_ = _field_types(tuple(agents)).get(name)
    if types_ is None:
        raise ValueError(f"{at}: {what} {name!r} is no config field of training or of agent(s) {', '.join(agents)}")
    for value in values:
        for tp in types_:
            if _accepts(tp, value) is False:
                raise ValueError(f"{at}: {what} {name!r} has value {value!r}, but {name} takes {_describe(tp)}")


def _accepts(tp, value: str) -> bool | None:
    """Whether `lps train` takes `value` (text, tokens split on spaces) for a field of type `tp`;
    None for types too rich to check here (nested configs)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value == "None" and type(None) in args:
            return True
        verdicts = [_accepts(a, value) for a in args if a is not type(None)]
        return None if None in verdicts else any(verdicts)
    if origin is tuple:
        tokens = value.split()
        if len(args) == 2 and args[1] is Ellipsis:
            verdicts = [_accepts(args[0], t) for t in tokens]
        elif len(tokens) != len(args):
            return False
        else:
            verdicts = [_accepts(a, t) for a, t in zip(args, tokens)]
        return None if None in verdicts else bool(tokens) and all(verdicts)
    if origin is None and tp not in (bool, int, float, str):
        return None
    if len(value.split()) != 1 or value != value.strip():
        return False  # a scalar field takes one token
    if origin is typing.Literal:
        return value in [str(a) for a in args]
    if tp is bool:
        return value.lower() in ("true", "false")
    if tp is int:
        return re.fullmatch(r"[+-]?\d+", value) is not None
    if tp is float:
        try:
            float(value)
        except ValueError:
            return False
    return True


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(str(a)) for a in args)
    if origin is tuple:
        inner = _describe(args[0]) if args else "value"
        return f"one or more values, each {inner} (e.g. [256, 256])"
    return {bool: "true or false", int: "an integer", float: "a number (float)",
            str: "one word (no spaces)"}.get(tp, getattr(tp, "__name__", str(tp)))  # fmt: skip


@functools.cache
def _field_defaults() -> dict:
    """Every config field (training and every agent's) -> a default value, for type checks."""
    out = dict(flat(TrainConfig()))
    for cls in (cfg for _, cfg in REGISTRY.values()):
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, f.default)
    return out


def _fields(agent: str) -> set[str]:
    return set(flag_types()) | {f.name for f in dataclasses.fields(config_class(agent))}


def _run_name(agent: str, overrides: dict[str, str]) -> str:
    name = agent + "".join(f"-{k}={v.replace(' ', 'x')}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name)


def _train_args_for(agent: str, train_args: list[str], grid: dict, dropped: set) -> tuple[str, ...]:
    """`train_args` less the flags of config fields that `agent` lacks (and some other agent has)
    and of fields that the grid sets."""
    known, mine, out, keep = set(_field_defaults()), _fields(agent), [], True
    for arg in train_args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            name = name[3:] if name.startswith("no_") and name[3:] in known else name
            if name in RESERVED:
                raise ValueError(f"train argument {arg} is set by the sweep: use {RESERVED[name]}")
            keep = (name not in known or name in mine) and name not in grid
            if name in known and name not in mine:
                dropped.add((agent, name))
        if keep:
            out.append(arg)
    return tuple(out)


def expand(spec: SweepSpec, group_seeds: bool = True, report=print) -> list[RunSpec]:
    """The sweep's runs, one per seed-group (or per seed). Grid fields an agent lacks are dropped
    for that agent, which collapses its grid points (reported once)."""
    known = set(_field_defaults())
    for name in [*spec.grid, *(k for v in spec.variants for k in v)]:
        if name in RESERVED:
            raise ValueError(f"grid field {name!r} is set by the sweep: use {RESERVED[name]}")
        if name not in known:
            raise ValueError(f"grid field {name!r} is no config field of training or of any agent")
    runs: dict[tuple, RunSpec] = {}
    dropped: set[tuple[str, str]] = set()
    for agent in spec.agents:
        check_agent(agent)
        mine, train_args = _fields(agent), _train_args_for(agent, spec.train_args, spec.grid, dropped)
        dropped |= {(agent, k) for k in [*spec.grid, *(k for v in spec.variants for k in v)] if k not in mine}
        points = itertools.product(spec.tasks, spec.variants, itertools.product(*spec.grid.values()))
        for task, variant, point in points:
            overrides = {k: v for k, v in {**dict(zip(spec.grid, point)), **variant}.items() if k in mine}
            run_dir = str(Path(spec.out) / task / _run_name(agent, overrides))
            runs.setdefault((agent, task, run_dir), RunSpec(agent, task, (), overrides, run_dir, train_args))
    for agent in spec.agents:
        if names := sorted(n for a, n in dropped if a == agent):
            report(f"[sweep] {agent} has no config field {', '.join(names)}: dropped for {agent}")
    seed_groups = [tuple(spec.seeds)] if group_seeds else [(s,) for s in spec.seeds]
    return [dataclasses.replace(run, seeds=seeds) for run in runs.values() for seeds in seed_groups]


def _launch(args: list[str], logs: list[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run `lps ARGS` in a subprocess, appending its output to every log; (exit code, seconds, tail)."""
    cmd = [sys.executable, "-m", "lps.cli", *args]
    files = []
    for path in logs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        files.append(open(path, "a", buffering=1))
    tail, start = collections.deque(maxlen=TAIL_LINES), time.perf_counter()
    try:
        for f in files:
            f.write(f"[sweep] {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(cmd)}\n")
        out, env = subprocess.PIPE, {**os.environ, **(env or {})}
        with subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, text=True, errors="replace") as p:
            for line in p.stdout:
                tail.append(line)
                for f in files:
                    f.write(line)
        for f in files:
            f.write(f"[sweep] exit code {p.returncode}\n")
    finally:
        for f in files:
            f.close()
    return p.returncode, time.perf_counter() - start, "".join(tail)


def _logs(run: RunSpec) -> list[str]:
    return [str(run.seed_dir(s) / LOG) for s in run.seeds]


def _outcome(get) -> tuple[int, float, str]:
    """A launch's (exit code, seconds, log tail); exit code -1 where it could not run at all."""
    try:
        return get()
    except Exception as e:  # a launch that failed (e.g. a Ray worker died) fails its runs only
        return -1, 0.0, f"{type(e).__name__}: {e}"


def _local(todo: list[RunSpec], workers: int, gpus: int = 0):
    """`workers` processes at once; with `gpus`, each process gets one GPU of its own
    (CUDA_VISIBLE_DEVICES) for as long as it runs."""
    # Processes sharing a GPU must not each grab most of its memory up front.
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if workers > 1 and not gpus else {}
    free = queue.Queue()
    for g in range(gpus):
        free.put(g)

    def launch(run: RunSpec):
        if not gpus:
            return _launch(run.args(), _logs(run), env)
        gpu = free.get()
        try:
            return _launch(run.args(), _logs(run), {**env, "CUDA_VISIBLE_DEVICES": str(gpu)})
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(launch, run): run for run in todo}
        for future in as_completed(futures):
            yield futures[future], _outcome(future.result)


def _ray(todo: list[RunSpec], address: str, gpus: float, cpus: float):
    try:
        import ray
    except ImportError as e:
        raise ImportError('sweeps on Ray need Ray: pip install "lps[sweep]"') from e
    started = not ray.is_initialized()
    if started:
        with warnings.catch_warnings():  # Ray starts its processes with fork + exec, which is safe
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            try:
                ray.init(address=address)
            except ConnectionError as e:
                raise RuntimeError(f"cannot reach Ray at {address!r}: {e}") from e
    try:
        # A task given no GPU sees none (Ray leaves CUDA_VISIBLE_DEVICES alone then), and tasks
        # that may share a GPU must not each grab most of its memory up front.
        env = {"CUDA_VISIBLE_DEVICES": ""} if gpus == 0 else {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        launch = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_launch)
        pending = {launch.remote(run.args(), _logs(run), env): run for run in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ready[0]), _outcome(functools.partial(ray.get, ready[0]))
    finally:
        if started:
            ray.shutdown()


def run_sweep(
    spec: SweepSpec,
    workers: int | None = None,
    ray_address: str | None = None,
    gpus_per_task: float = 0,
    cpus_per_task: float = 1,
    group_seeds: bool = True,
    dry_run: bool = False,
    report=print,
    gpus: int = 0,
) -> list[Result]:
    """Run the sweep's unfinished runs (locally with `workers` processes, or on Ray) and return one
    Result per run (seed), in expansion order; prints progress and a final table with `report`."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers is {workers!r}; expected an integer >= 1 (local processes at once)")
    workers = workers or (gpus if gpus and spec.workers == 1 else spec.workers)
    if ray_address is not None:  # Ray workers may start elsewhere: give them absolute paths
        spec = dataclasses.replace(spec, out=str(Path(spec.out).resolve()))
    runs = expand(spec, group_seeds, report)
    results, todo = [], []
    for run in runs:
        done = {s for s in run.seeds if (run.seed_dir(s) / SUMMARY_JSON).exists()}
        results += [Result(run, s, "skipped") for s in run.seeds if s in done]
        if len(done) < len(run.seeds):
            todo.append(dataclasses.replace(run, seeds=tuple(s for s in run.seeds if s not in done)))
    total = sum(len(r.seeds) for r in runs)
    killed = sum((run.seed_dir(s) / "config.json").exists() for run in todo for s in run.seeds)
    if killed:
        report(f"[sweep] {killed} interrupted run(s) (no {SUMMARY_JSON}) restart from scratch (--overwrite)")
    report(
        f"[sweep] {total} runs: {len(results)} already finished (skipped), {total - len(results)} to run "
        f"in {len(todo)} process(es) " + (f"on Ray ({ray_address})" if ray_address else f"with {workers} worker(s)")
    )
    if todo:
        prepare_data(sorted({r.task for r in todo}), spec.train_args, dry_run, report)
    if dry_run:
        for run in todo:
            report(shlex.join([sys.executable, "-m", "lps.cli", *run.args()]))
        return results + [Result(run, s, "planned") for run in todo for s in run.seeds]
    if todo:
        pool = _ray(todo, ray_address, gpus_per_task, cpus_per_task) if ray_address else _local(todo, workers, gpus)
        for run, (code, wall, tail) in pool:
            for s in run.seeds:
                ok = code == 0 and (run.seed_dir(s) / SUMMARY_JSON).exists()
                results.append(Result(run, s, "finished" if ok else "failed", wall, code, "" if ok else tail))
            what = f"{run.run_dir} seeds {','.join(map(str, run.seeds))}"
            if code == 0:
                report(f"[sweep] done {what} in {wall:.0f}s")
            else:
                log = run.seed_dir(run.seeds[0]) / LOG
                report(f"[sweep] FAILED (exit code {code}) {what}; last lines of {log}:\n{tail.rstrip()}")
    order = {run.run_dir: i for i, run in enumerate(runs)}
    results.sort(key=lambda r: (order[r.run.run_dir], r.seed))
    report(format_table(results))
    return results


def _train_flag(train_args: list[str], name: str) -> str | None:
    """The last value of `--name V` (or `--name=V`) in train arguments."""
    value = None
    for i, arg in enumerate(train_args):
        if arg == f"--{name}" and i + 1 < len(train_args):
            value = train_args[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def prepare_data(tasks: list[str], train_args: list[str], dry_run: bool = False, report=print) -> None:
    """Generate the play data of every OGBench environment the tasks need and lack, once per
    environment with every core, before any training process starts (concurrent processes would
    otherwise each generate it)."""
    if _train_flag(train_args, "dataset") is not None:
        return

    data_dir = Path(_train_flag(train_args, "data-dir") or default_data_dir()).expanduser()
    preset = PRESETS.get(_train_flag(train_args, "preset") or "paper", {}).get("train", {})
    episodes = int(_train_flag(train_args, "episodes") or preset.get("episodes", 1000))
    seed = int(_train_flag(train_args, "data-seed") or 0)
    missing = [env for env in envs_of(tasks) if not dataset_paths(env, data_dir)[0].exists()]
    for env in missing:
        if dry_run:
            report(f"[sweep] would generate {env} play data first: {episodes} episodes, seed {seed} -> {data_dir}")
            continue

        report(f"[sweep] generating {env} play data ({episodes} episodes) before training")
        generate(env, data_dir, episodes=episodes, seed=seed, workers=os.cpu_count() or 1, progress=False)


def format_table(results: list[Result]) -> str:
    rows = [("status", "exit", "wall", "run")]
    for r in results:
        code, wall = "" if r.returncode is None else str(r.returncode), "" if r.wall_s is None else f"{r.wall_s:.0f}s"
        rows.append((r.status, code, wall, str(r.run_dir)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths)), row[3]]) for row in rows]
    counts = collections.Counter(r.status for r in results)
    lines.append(", ".join(f"{counts[s]} {s}" for s in ("finished", "skipped", "failed", "planned") if counts[s]))
    return "\n".join(lines)


def load_spec(path: str | Path) -> SweepSpec:
    """A sweep from a YAML or TOML file with the keys of SweepSpec."""
    data = read_spec_file(path)
    missing = [key for key in ("agents", "tasks") if not data.get(key)]
    if missing:
        raise ValueError(f"{path}: the sweep names no {' and no '.join(missing)}; add them to the file")
    return SweepSpec(**checked(data, {key: str(path) for key in data}))


def read_spec_file(path: str | Path) -> dict:
    """The keys of a YAML or TOML sweep file, checked against SweepSpec's (flags may add the rest)."""
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"{path}: a sweep file is .yaml, .yml or .toml")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file ({e})") from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
    else:
        try:
            import yaml
        except ImportError as e:
            raise ImportError('YAML sweep files need PyYAML: pip install "lps[sweep]"') from e
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:  # its message says where the syntax breaks
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file holds a mapping of keys (agents, tasks, ...), got a {type(data).__name__}")
    unknown = set(data) - {f.name for f in dataclasses.fields(SweepSpec)}
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {sorted(unknown)}; "
            "keys: agents, tasks, seeds, grid, variants, train_args, out, workers"
        )
    return data

