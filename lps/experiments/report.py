"""`lps report`: the paper's reporting from a folder of runs; see docs/sweeps-and-reports.md.

    result = report("runs/compare")   # writes runs/compare/report/{report.md, summary.csv, ...}

Per agent x task, the final success over seeds with a 95 % bootstrap CI; per agent, the IQM over
tasks x seeds with a stratified-bootstrap CI (rliable); learning curves, success against a swept
`alpha` (Figure 6) and validation curves. Every bootstrap is seeded.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lps.files import atomic_write
from lps.training.runlog import pyplot


@dataclass
class Run:
    agent: str
    task: str
    seed: int
    alpha: float | None
    steps: np.ndarray  # gradient steps of the evaluations
    success: np.ndarray  # eval/success at those steps
    run_dir: Path
    label: str = ""  # the agent's row in the tables: `agent`, or `agent (alpha=A)` in a sweep
    settings: dict = field(default_factory=dict)  # other config that should match across pooled seeds
    val: dict = field(default_factory=dict)  # `val/...` metric -> (steps, values), from lps.training.val_split
    # Offline-to-online runs: the offline gradient steps, the online env steps asked for, and the
    # env step of each evaluation (NaN for those of the offline phase).
    offline_steps: int = 0
    online_steps: int = 0
    env_steps: np.ndarray | None = None
    finished: bool = True  # `lps train` wrote its summary.json (a run in progress or stopped has none)

    @property
    def phase_steps(self) -> np.ndarray:
        """The x of Figure 13: gradient steps offline, then offline steps + env steps online."""
        env = self.env_steps if self.env_steps is not None else np.full(len(self.steps), np.nan)
        return np.where(np.isnan(env), self.steps, self.offline_steps + np.nan_to_num(env)).astype(np.int64)


VAL_METRICS = ("val/bc_loss", "val/td_error", "val/q_gap", "val/clip_fraction")


def alpha_has_no_effect(agent: str) -> bool:
    """Whether `--alpha` leaves the agent's training unchanged (LPS, DSRL-NA: see `lps agents`)."""
    from lps.agents import REGISTRY

    return agent in REGISTRY and getattr(REGISTRY[agent][0], "alpha_is_no_op", False)


def _warn(msg: str) -> None:
    print(f"[lps] report: {msg}", file=sys.stderr)


# Train fields that change what a run measures (besides the agent's config): pooling seeds that differ
# in them, e.g. a quick and a paper-preset run, is warned about.
_TRAIN_SETTINGS = ("steps", "episodes", "reward", "chunk_len", "batch_size", "lr", "dataset", "online_steps", "utd",
                   "online_mix")


_RUN_MARKERS = ("metrics.jsonl", "checkpoint.msgpack", "sweep.log", ".lock")


def collect(root: str | Path) -> list[Run]:
    """Every run below `root` (a `config.json` with a `metrics.jsonl` beside it) that has evaluations."""
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(f"{root} is a file; lps report reads a folder of run directories (e.g. runs/)")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    _warn_unstarted(root)
    runs = [_read_run(config_path) for config_path in sorted(root.glob("**/config.json"))]
    return [run for run in runs if run is not None]


def _warn_unstarted(root: Path) -> None:
    """Folders that a run (or a sweep) started but that hold no config.json are named, not ignored."""
    started = {p.parent for marker in _RUN_MARKERS for p in root.glob(f"**/{marker}")}
    for folder in sorted(started):
        # A run's own subfolders (its online phase's checkpoint, lps.training.online) are part of that run.
        if not (folder / "config.json").exists() and not (folder.parent / "config.json").exists():
            found = ", ".join(m for m in _RUN_MARKERS if (folder / m).exists())
            _warn(f"skipping {folder}: it holds {found} but no config.json (the run stopped before it started)")


def _read_run(config_path: Path) -> Run | None:
    """The run of this config.json, or None (with a warning) when it cannot be scored."""
    run_dir = config_path.parent
    if not (run_dir / "metrics.jsonl").exists():
        _warn(f"skipping {run_dir}: no metrics.jsonl (the run never logged a step)")
        return None
    try:
        record = json.loads(config_path.read_text())
        agent, train = record["agent"], record["train"]
        if not isinstance(train, dict):
            raise TypeError(f"'train' is a {type(train).__name__}, not a mapping")
        train = _flat_train(train)
        lines = (run_dir / "metrics.jsonl").read_text(errors="replace").splitlines()
    except (OSError, ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        _warn(f"skipping {run_dir}: unreadable {config_path.name} or metrics.jsonl ({what})")
        return None
    rows = _EvalRows(lines)
    if not rows.usable(run_dir / "metrics.jsonl"):
        return None
    steps = np.array(sorted(rows.evals))
    # A run trained from --dataset has no env name; its dataset's file name stands in.
    task = train.get("env") or Path(train.get("dataset") or "unknown").stem
    alpha = (record.get("agent_config") or {}).get("alpha")
    alpha = None if alpha is None else float(alpha)
    success = np.array([rows.evals[s] for s in steps])
    settings = {k: v for k, v in (record.get("agent_config") or {}).items() if k != "alpha"}
    settings.update({k: train[k] for k in _TRAIN_SETTINGS if k in train})
    val_series = {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in rows.val.items()}
    return Run(agent, task, int(train.get("seed", 0)), alpha, steps, success, run_dir, settings=settings,
               val=val_series, offline_steps=int(train.get("steps", 0)),
               online_steps=int(train.get("online_steps") or 0),
               env_steps=np.array([rows.env_steps[s] for s in steps]),
               finished=(run_dir / "summary.json").exists())  # fmt: skip


def _flat_train(train: dict) -> dict:
    """A recorded train config by flag name: runs since the `eval` and `online` groups hold those
    fields nested, under their own names (lps.training.config); flags are what a report shows."""
    train = dict(train)
    for group in ("eval", "online"):
        sub = train.pop(group, None)
        if isinstance(sub, dict):
            train.update({_GROUP_FLAGS.get((group, k), f"{group}_{k}"): v for k, v in sub.items()})
    return train


# fields of a group whose flag is not `<group>_<field>` (lps.training.config.OnlineConfig, EvalConfig)
_GROUP_FLAGS = {("online", "utd"): "utd", ("eval", "overlap"): "eval_async"}


class _EvalRows:
    """A metrics.jsonl's evaluations: success and env step by gradient step, the val/ series, and the
    evaluation rows whose success cannot count ("step S: VALUE")."""

    def __init__(self, lines: list[str]):
        self.evals: dict[int, float] = {}
        self.val: dict[str, dict[int, float]] = {}
        self.env_steps: dict[int, float] = {}
        self.eval_rows, self.bad = 0, []  # rows with an eval/success; those that cannot count
        for line in lines:
            try:  # a run still being written may end in a partial line
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and _is_number(row.get("step")):
                self._add(int(row["step"]), row)

    def _add(self, step: int, row: dict) -> None:
        if (value := row.get("eval/success")) is not None:
            self.eval_rows += 1
            if _is_number(value) and 0.0 <= value <= 1.0:
                self.evals[step] = float(value)  # a repeated step (resume): the later row wins
                env_step = row.get("env_step")
                self.env_steps[step] = float(env_step) if _is_number(env_step) else math.nan
            else:  # a success rate is a number in [0, 1]: anything else would skew every mean
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                self.bad.append(f"step {step}: {shown}")
        for key in VAL_METRICS:
            if _is_number(row.get(key)):
                self.val.setdefault(key, {})[step] = float(row[key])

    def usable(self, metrics: Path) -> bool:
        """Whether any evaluation counts; warns about those that do not."""
        bad, eval_rows = self.bad, self.eval_rows
        shown = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        if not self.evals:
            if bad:
                rows = f"{eval_rows} evaluation row{'s' if eval_rows > 1 else ''}"
                _warn(f"skipping {metrics.parent}: {metrics} has {rows}, none usable: {shown} "
                      "(eval/success must be a number in [0, 1])")  # fmt: skip
            else:
                _warn(f"skipping {metrics.parent}: no evaluation rows (eval/success) in metrics.jsonl")
            return False
        if bad:
            _warn(f"{metrics}: skipped {len(bad)} of {eval_rows} evaluation rows whose eval/success is not a number "
                  f"in [0, 1]: {shown}")  # fmt: skip
        return True


def _is_number(x) -> bool:
    """A finite int or float (not a bool, a string or NaN): what a metrics row's number must be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _label(runs: list[Run]) -> None:
    """Split an agent by alpha only when it was swept: several alphas on one task. QC-FQL's
    per-environment default alpha differs between tasks, and that must not split it; nor is an
    agent on which alpha has no effect (LPS, DSRL-NA) ever split."""
    alphas: dict[tuple[str, str], set] = {}
    for r in runs:
        alphas.setdefault((r.agent, r.task), set()).add(r.alpha)
    swept = {agent for (agent, _), values in alphas.items() if len(values) > 1 and not alpha_has_no_effect(agent)}
    for r in runs:
        r.label = _name(r.agent, r.alpha) if r.agent in swept and r.alpha is not None else r.agent


ABLATION_FIELDS = ("geometry", "backbone", "parameterisation")


def _label_ablations(runs: list[Run]) -> None:
    """Split an agent by its ablation settings (the paper's §5, `lps sweep --suite
    ogbench-ablations`) when they were swept: the same task and seed run with different settings.
    Only fields that differ from the agent's defaults appear: `lps (geometry=normal)`. Runs whose
    settings differ without sharing a seed stay pooled (and are warned about)."""
    by_seed: dict[tuple[str, str, int], set] = {}
    for r in runs:
        by_seed.setdefault((r.agent, r.task, r.seed), set()).add(tuple(r.settings.get(f) for f in ABLATION_FIELDS))
    swept = {agent for (agent, _, _), values in by_seed.items() if len(values) > 1}
    for agent in swept:
        mine = [r for r in runs if r.agent == agent]
        defaults = _agent_defaults(agent)
        for r in mine:
            parts = []
            for f in ABLATION_FIELDS:
                values = {q.settings.get(f) for q in mine}
                default = defaults.get(f, max(values, key=lambda v: sum(q.settings.get(f) == v for q in mine)))
                if len(values) > 1 and r.settings.get(f) != default:
                    parts.append(f"{f}={r.settings.get(f)}")
            if parts:
                r.label = f"{r.label} ({', '.join(parts)})"
            r.settings = {k: v for k, v in r.settings.items() if k not in ABLATION_FIELDS}


def _agent_defaults(agent: str) -> dict:
    try:
        from lps.agents import config_class

        return {f.name: f.default for f in dataclasses.fields(config_class(agent))}
    except Exception:  # noqa: BLE001  (an agent this version does not know: no defaults)
        return {}


def _name(agent: str, alpha: float) -> str:
    return f"{agent} (alpha={alpha:g})"


def _bootstrap_ci(strata: list[np.ndarray], reps: int, rng: np.random.Generator) -> np.ndarray:
    """95 % percentile CI of the mean, resampling seeds within each stratum (task). Strata may be
    (seeds,) or (seeds, T): then one CI per column (a learning curve's eval steps)."""
    resampled = [s[rng.integers(0, len(s), (reps, len(s)))] for s in strata]
    return np.percentile(np.concatenate(resampled, axis=1).mean(axis=1), [2.5, 97.5], axis=0)


def _rng(seed: int, *key: str) -> np.random.Generator:
    # One stream per cell, keyed by its name, so a cell's CI does not change when runs of other
    # agents or tasks are added to the folder.
    return np.random.default_rng([seed, zlib.crc32("|".join(key).encode())])


def _aggregate(matrices: dict[str, np.ndarray], reps: int, seed: int) -> dict[str, dict]:
    """IQM and mean over (seeds x tasks) per agent, with rliable's stratified-bootstrap CIs."""
    try:
        from rliable import library, metrics
    except ImportError as e:
        raise ImportError(f'lps report needs rliable: pip install "lps[report]" ({e})') from e
    # rliable draws from numpy's global RNG: seed it for reproducibility, then restore the caller's.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        point, interval = library.get_interval_estimates(
            matrices,
            lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]),
            reps=reps,
        )
    finally:
        np.random.set_state(saved)
    result = {}
    for label, m in matrices.items():
        result[label] = dict(n_tasks=m.shape[1], n_seeds=m.shape[0])
        for i, name in enumerate(("iqm", "mean")):
            low, high = interval[label][:, i]
            result[label].update({name: float(point[label][i]), f"{name}_low": float(low), f"{name}_high": float(high)})
    return result


def _cell(mean: float, low: float, high: float, n: int | None = None) -> str:
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]" + (f" (n={n})" if n is not None else "")


def _short(task: str) -> str:
    """cube-single-play-singletask-task1-v0 -> cube-single-task1 (a table column that fits)."""
    return re.sub(r"-play(-sparse)?-singletask-(task\d+)-v0$", r"\1-\2", task)


def _csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def _curves(task: str, groups: dict, labels: list[str], reps: int, seed: int, out: Path) -> list[Path]:
    """Success against gradient steps on one task, one line per agent, bootstrap band over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for lab in labels:
        group = groups.get((lab, task))
        if not group:
            continue
        if not _seed_band(ax, group, lambda r: r.steps, lab, _rng(seed, lab, task, "curve"), reps):
            _warn(f"{lab} on {task}: its seeds share no evaluation step; no curve drawn")
    ax.set(xlabel="gradient steps", ylabel="success rate", ylim=(-0.02, 1.02), title=task)
    return _finish(fig, ax, out / f"curves-{task}")


def _seed_band(ax, group: list[Run], x_of, label: str, rng: np.random.Generator, reps: int) -> bool:
    """Plot the mean success of a group of seeds with its 95 % bootstrap band, at the evaluations
    (gradient steps) every seed has (a killed seed may have fewer), drawn at x = the seeds' mean
    `x_of(run)` there (online, seeds reach an evaluation at slightly different env steps); False if
    they share no evaluation."""
    steps = sorted(set.intersection(*(set(r.steps.tolist()) for r in group)))
    if not steps:
        return False
    index = [np.searchsorted(r.steps, steps) for r in group]
    y = np.array([r.success[i] for r, i in zip(group, index)])
    x = np.mean([x_of(r)[i] for r, i in zip(group, index)], axis=0)
    low, high = _bootstrap_ci([y], reps, rng)
    (line,) = ax.plot(x, y.mean(axis=0), marker="o", ms=3, label=f"{label} (n={len(group)})")
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    return True


def _online_curves(task: str, groups: dict, labels: list[str], reps: int, seed: int, out: Path) -> list[Path]:
    """The paper's Figure 13 for runs with an online phase: success against offline gradient
    steps and then online env steps, the transition marked; nothing when no run went online."""
    online = {lab: [r for r in groups.get((lab, task), []) if r.online_steps] for lab in labels}
    online = {lab: g for lab, g in online.items() if g}
    if not online:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    transitions = set()
    for lab, group in online.items():
        if not _seed_band(ax, group, lambda r: r.phase_steps, lab, _rng(seed, lab, task, "online"), reps):
            _warn(f"{lab} on {task}: its online seeds share no evaluation step; no online curve drawn")
            continue
        transitions |= {r.offline_steps for r in group}
    for i, x in enumerate(sorted(transitions)):
        ax.axvline(x, color="k", ls="--", lw=1, label="offline -> online" if i == 0 else None)
    ax.set(xlabel="offline gradient steps, then online env steps", ylabel="success rate", ylim=(-0.02, 1.02),
           title=f"{task}: offline to online")  # fmt: skip
    return _finish(fig, ax, out / f"online-{task}")


def _alpha_plot(alpha: dict[str, dict[float, dict]], untuned: dict[str, dict], out: Path) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for agent, points in alpha.items():
        xs, ps = list(points), list(points.values())
        (line,) = ax.plot(xs, [p["mean"] for p in ps], marker="o", label=agent)
        ax.fill_between(xs, [p["ci_low"] for p in ps], [p["ci_high"] for p in ps], color=line.get_color(), alpha=0.2)
    for agent, p in untuned.items():  # as the paper's Figure 6 draws LPS: one line, nothing to tune
        line = ax.axhline(p["mean"], ls="--", color="k" if agent == "lps" else None, label=f"{agent} (untuned)")
        ax.axhspan(p["ci_low"], p["ci_high"], color=line.get_color(), alpha=0.1, lw=0)
    # alpha = 0 (no regularisation) has no place on a log axis; symlog keeps it.
    alphas = sorted({a for points in alpha.values() for a in points})
    ax.set_xscale("log" if alphas[0] > 0 else "symlog")
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas], minor=False)
    ax.minorticks_off()
    ax.set(xlabel="alpha", ylabel="success rate", ylim=(-0.02, 1.02), title="alpha sensitivity")
    return _finish(fig, ax, out / "alpha")


def _finish(fig, ax, path: Path) -> list[Path]:
    if ax is not None:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, never over a curve
    fig.tight_layout()
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        # A fixed salt for the SVG's element ids and no date in it, so the same runs give the same file.
        with pyplot().rc_context({"svg.hashsalt": "lps-report"}):
            fig.savefig(buf, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
        atomic_write(path.with_suffix(f".{fmt}"), buf.getvalue())
    pyplot().close(fig)
    return [path.with_suffix(".png"), path.with_suffix(".svg")]


def _markdown(cells, aggregate, alpha, untuned, notes, tasks: list[str], final: str, reps: int, per_env=None) -> str:
    what = "last evaluation" if final == "last" else "best evaluation"
    md = [f"Success rate ({what} of each run; mean over seeds [95 % bootstrap CI], {reps} resamples)", ""]
    md += ["| agent | " + " | ".join(map(_short, tasks)) + " | IQM |", "|---" * (len(tasks) + 2) + "|"]
    for lab, by_task in cells.items():
        row = [
            _cell(c["mean"], c["ci_low"], c["ci_high"], c["n_seeds"]) if (c := by_task.get(t)) else "—" for t in tasks
        ]
        g = aggregate[lab]
        md.append(f"| {lab} | " + " | ".join(row) + f" | {_cell(g['iqm'], g['iqm_low'], g['iqm_high'])} |")
    if per_env:
        md += _per_env_markdown(per_env)
    if alpha:
        alphas = sorted({a for points in alpha.values() for a in points})
        md += ["", "Alpha sensitivity (mean over seeds and tasks [95 % stratified bootstrap CI])", ""]
        md += ["| agent | " + " | ".join(f"alpha={a:g}" for a in alphas) + " |", "|---" * (len(alphas) + 1) + "|"]
        for agent, points in alpha.items():
            row = [_cell(p["mean"], p["ci_low"], p["ci_high"], p["n"]) if (p := points.get(a)) else "—" for a in alphas]
            md.append(f"| {agent} | " + " | ".join(row) + " |")
        for agent, p in untuned.items():
            cell = _cell(p["mean"], p["ci_low"], p["ci_high"], p["n"])
            md.append(f"| {agent} (untuned: alpha has no effect) | " + " | ".join([cell] * len(alphas)) + " |")
    if notes:
        md += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(md) + "\n"


def _cells(groups: dict, labels: list[str], tasks: list[str], score: dict, reps: int, seed: int) -> dict:
    """Per agent x task: mean final success over seeds and a percentile-bootstrap CI over them."""
    cells: dict[str, dict[str, dict]] = {lab: {} for lab in labels}
    for lab in labels:
        for task in tasks:
            if (group := groups.get((lab, task))) is None:
                continue
            x = np.array([score[id(r)] for r in group])
            low, high = _bootstrap_ci([x], reps, _rng(seed, lab, task))
            cells[lab][task] = dict(
                n_seeds=len(x),
                mean=float(x.mean()),
                ci_low=float(low),
                ci_high=float(high),
                seeds=[r.seed for r in group],
                scores=x.tolist(),
            )
    return cells


def _env_of(task: str) -> str | None:
    m = re.match(r"(.+)-play(-sparse)?-singletask-task\d+-v0$", task)
    return m.group(1) + (m.group(2) or "") if m else None


def _per_env(cells: dict, tasks: list[str], reps: int, seed: int) -> dict[str, dict[str, dict]]:
    """The paper's Table I: per agent x environment, the mean over that environment's tasks (and
    their seeds) with a 95 % bootstrap CI resampling seeds within each task. Empty unless some
    environment has runs on two or more tasks."""
    envs: dict[str, list[str]] = {}
    for t in tasks:
        if (env := _env_of(t)) is not None:
            envs.setdefault(env, []).append(t)
    if not any(len(ts) > 1 for ts in envs.values()):
        return {}
    table: dict[str, dict[str, dict]] = {}
    for lab, by_task in cells.items():
        for env, env_tasks in envs.items():
            strata = [np.array(by_task[t]["scores"]) for t in env_tasks if t in by_task]
            if not strata:
                continue
            low, high = _bootstrap_ci(strata, reps, _rng(seed, lab, env, "env"))
            x = np.concatenate(strata)
            table.setdefault(lab, {})[env] = dict(
                n_tasks=len(strata), n=len(x), mean=float(x.mean()), ci_low=float(low), ci_high=float(high)
            )
    return table


def _per_env_markdown(table: dict[str, dict[str, dict]]) -> list[str]:
    envs = list(dict.fromkeys(env for row in table.values() for env in row))
    md = ["", "Per environment (the paper's Table I): mean over its tasks and seeds [95 % bootstrap CI, "
          "seeds resampled within tasks] (tasks)", ""]  # fmt: skip
    md += ["| agent | " + " | ".join(envs) + " |", "|---" * (len(envs) + 1) + "|"]
    for lab, row in table.items():
        cells = [f"{_cell(c['mean'], c['ci_low'], c['ci_high'])} ({c['n_tasks']})" if (c := row.get(e)) else "—"
                 for e in envs]  # fmt: skip
        md.append(f"| {lab} | " + " | ".join(cells) + " |")
    return md


def _alpha_points(runs: list[Run], cells: dict, reps: int, seed: int) -> dict[str, dict[float, dict]]:
    """Success against alpha for each swept agent, over seeds and tasks (resampling seeds within tasks)."""
    points: dict[str, dict[float, dict]] = {}
    for agent in sorted({r.agent for r in runs if r.label != r.agent}):
        for a in sorted({r.alpha for r in runs if r.agent == agent and r.alpha is not None}):
            strata = [np.array(c["scores"]) for c in cells[_name(agent, a)].values()]
            x = np.concatenate(strata)
            low, high = _bootstrap_ci(strata, reps, _rng(seed, _name(agent, a), "alpha"))
            points.setdefault(agent, {})[a] = dict(
                n=len(x), n_tasks=len(strata), mean=float(x.mean()), ci_low=float(low), ci_high=float(high)
            )
    return points


def _untuned_points(runs: list[Run], cells: dict, alpha: dict, reps: int, seed: int) -> dict[str, dict]:
    """For the alpha figure: each agent on which alpha has no effect, over the swept agents' tasks."""
    if not alpha:
        return {}
    swept_tasks = {r.task for r in runs if r.agent in alpha}
    points = {}
    for agent in sorted({r.agent for r in runs if alpha_has_no_effect(r.agent)}):
        strata = [np.array(c["scores"]) for t, c in cells.get(agent, {}).items() if t in swept_tasks]
        if strata:
            x = np.concatenate(strata)
            low, high = _bootstrap_ci(strata, reps, _rng(seed, agent, "untuned"))
            points[agent] = dict(
                n=len(x), n_tasks=len(strata), mean=float(x.mean()), ci_low=float(low), ci_high=float(high)
            )
    return points


def _validation_plot(task: str, groups: dict, labels: list[str], out: Path) -> list[Path]:
    """Success beside the validation-split metrics on one task: one line per agent, mean over seeds."""
    plt = pyplot()
    keys = [k for k in VAL_METRICS if any(k in r.val for lab in labels for r in groups.get((lab, task), ()))]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(3.6 * (1 + len(keys)), 3.4), squeeze=False)
    axes = axes[0]
    for lab in labels:
        group = groups.get((lab, task))
        if not group or not any(r.val for r in group):
            continue
        color = None
        for ax, key in zip(axes, ["eval/success", *keys]):
            series = [(r.steps, r.success) if key == "eval/success" else r.val.get(key) for r in group]
            series = [s for s in series if s is not None and len(s[0])]
            if not series:
                continue
            steps = sorted(set.intersection(*(set(s[0].tolist()) for s in series)))
            if not steps:
                continue
            y = np.mean([s[1][np.searchsorted(s[0], steps)] for s in series], axis=0)
            (line,) = ax.plot(steps, y, marker="o", ms=3, color=color, label=f"{lab} (n={len(series)})")
            color = line.get_color()
    for ax, key in zip(axes, ["eval/success", *keys]):
        ax.set(xlabel="gradient steps", title=key)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    if "val/td_error" in keys:
        axes[1 + keys.index("val/td_error")].set_yscale("log")
    fig.suptitle(f"{task}: success and the validation split (mean over seeds)", fontsize=10)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, None, out / f"validation-{task}")


def report(root, out=None, reps: int = 1000, seed: int = 0, final: str = "last") -> dict:
    """Write report.md, summary.csv, aggregate.csv, curves-<task>.png/.svg (validation-<task>.png/.svg
    where runs logged val/ metrics; alpha.png/.svg after a sweep) to `out` (default ROOT/report).
    Returns the numbers: `cells[label][task]`, `aggregate[label]`, `alpha[agent][alpha]`,
    `untuned[agent]` (alpha-free agents' line in the alpha figure), plus `notes`, `markdown` and
    the `files` written."""
    if final not in ("last", "max"):
        raise ValueError(f"final must be 'last' or 'max', not {final!r}")
    if reps < 1:
        raise ValueError(f"reps must be at least 1, not {reps}")
    runs = collect(root)
    if not runs:
        raise FileNotFoundError(
            f"no run with evaluations under {root}: looked for **/config.json with a metrics.jsonl "
            "beside it holding eval/success rows"
        )
    out = Path(out) if out is not None else Path(root) / "report"
    _label(runs)
    _label_ablations(runs)
    score = {id(r): float(r.success[-1] if final == "last" else r.success.max()) for r in runs}
    labels, tasks, groups = _rows(runs), sorted({r.task for r in runs}), _groups(runs)
    cells = _cells(groups, labels, tasks, score, reps, seed)
    notes, matrices = _seed_matrices(cells, labels, tasks)
    notes += _unfinished_notes(groups)
    aggregate = _aggregate(matrices, reps, seed)
    alpha = _alpha_points(runs, cells, reps, seed)
    untuned = _untuned_points(runs, cells, alpha, reps, seed)
    if untuned:
        notes.append(
            f"alpha has no effect on {', '.join(untuned)} (Adam ignores the scale of its only loss): one untuned line"
        )
    files = _figures(runs, groups, labels, tasks, alpha, untuned, reps, seed, out)
    per_env = _per_env(cells, tasks, reps, seed)
    markdown = _markdown(cells, aggregate, alpha, untuned, notes, tasks, final, reps, per_env)
    files += _write_tables(out, markdown, cells, aggregate, per_env)
    return dict(cells=cells, aggregate=aggregate, alpha=alpha, untuned=untuned, notes=notes, markdown=markdown,
                files=files, per_env=per_env)  # fmt: skip


def _rows(runs: list[Run]) -> list[str]:
    """The table's rows: agents alphabetically, a swept agent's alphas in numeric order, then its
    ablations by name."""
    order = {r.label: (r.agent, -math.inf if r.label == r.agent or r.alpha is None else r.alpha, r.label)
             for r in runs}  # fmt: skip
    return sorted(order, key=order.get)


def _groups(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """The runs of each (label, task), by seed; warns about repeated seeds and pooled settings that differ."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        group = groups.setdefault((r.label, r.task), [])
        if twin := next((q for q in group if q.seed == r.seed), None):
            _warn(f"{r.label} on {r.task} seed {r.seed} appears twice ({twin.run_dir}, {r.run_dir}); both count")
        group.append(r)
    for (lab, task), group in groups.items():
        if differ := sorted({k for r in group for k in r.settings if r.settings[k] != group[0].settings.get(k)}):
            _warn(f"{lab} on {task}: its runs differ in {', '.join(differ)} but are pooled; report them separately")
    return groups


def _seed_matrices(cells: dict, labels: list[str], tasks: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Each label's (seeds x tasks) score matrix for rliable, and notes on what it had to leave out."""
    notes, matrices = [], {}
    for lab in labels:
        # rliable needs a full (seeds x tasks) matrix: keep the lowest-numbered seeds common to all tasks.
        counts = {t: c["n_seeds"] for t, c in cells[lab].items()}
        n = min(counts.values())
        if len(set(counts.values())) > 1:
            per_task = ", ".join(f"{_short(t)} {k}" for t, k in counts.items())
            notes.append(f"{lab} has different seed counts per task ({per_task}); its IQM uses {n} seeds per task")
        matrices[lab] = np.array([c["scores"][:n] for c in cells[lab].values()]).T
    if partial := [f"{lab} ({m.shape[1]})" for lab, m in matrices.items() if m.shape[1] < len(tasks)]:
        notes.append(
            f"not all agents ran all {len(tasks)} tasks; IQMs are over different task sets: {', '.join(partial)}"
        )
    return notes, matrices


def _unfinished_notes(groups: dict[tuple[str, str], list[Run]]) -> list[str]:
    notes = []
    for (lab, task), group in groups.items():
        if unfinished := [r for r in group if not r.finished]:
            at = ", ".join(f"seed {r.seed} at step {r.steps[-1]}" for r in unfinished)
            notes.append(f"{lab} on {_short(task)}: {len(unfinished)} run(s) unfinished (no summary.json; in progress "
                         f"or stopped), scored at their latest evaluation: {at} of {unfinished[0].offline_steps}")  # fmt: skip
    return notes


def _figures(runs, groups, labels, tasks, alpha, untuned, reps: int, seed: int, out: Path) -> list[Path]:
    """The curves of every task (validation and online ones where runs have them) and the alpha figure."""
    files = [f for task in tasks for f in _curves(task, groups, labels, reps, seed, out)]
    files += [f for task in tasks if any(r.val for r in runs if r.task == task)
              for f in _validation_plot(task, groups, labels, out)]  # fmt: skip
    files += [f for task in tasks for f in _online_curves(task, groups, labels, reps, seed, out)]
    if alpha:
        files += _alpha_plot(alpha, untuned, out)
    return files


def _write_tables(out: Path, markdown: str, cells: dict, aggregate: dict, per_env: dict) -> list[Path]:
    atomic_write(out / "report.md", markdown)
    keys = ("n_seeds", "mean", "ci_low", "ci_high")
    _csv(
        out / "summary.csv",
        [dict(agent=lab, task=t, **{k: c[k] for k in keys}) for lab in cells for t, c in cells[lab].items()],
    )
    _csv(out / "aggregate.csv", [dict(agent=lab, **g) for lab, g in aggregate.items()])
    files = [out / "report.md", out / "summary.csv", out / "aggregate.csv"]
    if per_env:
        _csv(out / "per_env.csv", [dict(agent=lab, env=e, **c) for lab, row in per_env.items() for e, c in row.items()])
        files.append(out / "per_env.csv")
    return files
