"""Run-directory safety: one process per run directory, resumes that cannot relabel a run, and a
clean stop on SIGINT/SIGTERM; see docs/outputs.md ("Runs are safe").

    with claim(run_dirs):                       # exclusive flock on <run>/.lock; leftover *.tmp removed
        check_resume(run_dir, agent, cfg, agent_cfg)   # refuses changes to what was trained
        with StopOnSignal() as stop: ... if stop.signum: save and raise TrainingInterrupted

The lock file records its holder (PID, host, start time) and is never deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

from lps.host import SignalCatcher, StoppedBySignal
from lps.training import checkpoint
from lps.training.config import CONFIG_JSON, TrainConfig, flat, load_config
from lps.training.runlog import METRICS_JSONL, read_rows

LOCK_FILE = ".lock"
RESUME_LOG = "resume_log.jsonl"
SUMMARY_JSON = "summary.json"
ONLINE_DIR = "online"  # <run>/online/: the online phase's checkpoint (lps.training.online)

# Train fields that may differ on resume without changing what the run is: how long it trains,
# how often it evaluates, logs and saves, what is shown, and on which devices and hosts it runs
# (`distributed`: a checkpoint does not depend on them). Every other train field, the agent and
# every agent config field define the run and are fixed.
MAY_CHANGE = frozenset(
    {"steps", "eval_every", "eval_episodes", "eval_workers", "eval_async", "eval_chunk_timeout", "log_every",
     "save_every", "progress", "tensorboard", "wandb", "wandb_project", "wandb_group", "wandb_name", "wandb_mode",
     "overwrite", "run_dir", "seeds", "online_steps", "online_workers", "distributed"}
)  # fmt: skip
# Optimisation settings that may change on resume but are recorded in the run's resume log (and
# printed), so a reader of the run sees that its later steps were trained differently. The online
# ones let an offline run gain an online phase; once that phase has begun, its own checkpoint
# refuses a different number of environments (lps.training.online).
RECORDED_CHANGES = frozenset({"batch_size", "lr", "utd", "online_mix", "online_envs", "online_start_steps"})


class RunDirLocked(RuntimeError):
    """Another live process is training into this run directory."""


class TrainingInterrupted(StoppedBySignal):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""


# --- the lock -------------------------------------------------------------------------------


def _check_is_folder(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {run_dir} is a file, not a folder; choose another --run-dir")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"run directory {run_dir}: {parent} is a file, not a folder")


def lock(run_dir: str | os.PathLike):
    """Take the run directory's lock (creating the folder); returns the open lock file, which holds
    the lock until it is closed or the process ends. Raises RunDirLocked naming the holder."""
    run_dir = Path(run_dir)
    _check_is_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _holder(f.read())
        f.close()
        raise RunDirLocked(
            f"{run_dir} is in use by another training process ({holder}); wait for it to finish or stop it, "
            "or choose another --run-dir"
        ) from None
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    f.flush()
    return f


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"PID {info['pid']} on host {info['host']}, since {info.get('since', '?')}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _remove_if_unused(run_dir: Path, created_from: Path) -> None:
    """Remove a run directory this process created if it holds nothing but its lock file (the
    lock is still held here, so no other trainer is using it), and the folders above it that
    this process created (from `created_from` down), if that leaves them empty."""
    if [p.name for p in run_dir.iterdir()] != [LOCK_FILE]:
        return
    (run_dir / LOCK_FILE).unlink()
    run_dir.rmdir()
    for parent in run_dir.parents:
        if parent == created_from.parent:
            break
        try:
            parent.rmdir()  # only if empty: another run may have appeared beside ours
        except OSError:
            break


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet, or None."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def remove_leftover_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes that a killed process never finished (`atomic_write`
    names them `.<name>.<random>.tmp`). Only safe while holding the run's lock."""
    removed = []
    for p in Path(run_dir).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def claim(run_dirs: list[Path]) -> Iterator[None]:
    """Hold the lock of every run directory for the life of the block; tidy what a killed run left."""
    with contextlib.ExitStack() as stack:
        for run_dir in run_dirs:
            created_from = _first_missing(Path(run_dir))
            stack.enter_context(lock(run_dir))
            if created_from is not None:  # a start refused before writing anything leaves no folder behind
                stack.callback(_remove_if_unused, Path(run_dir), created_from)
            removed = remove_leftover_temp_files(run_dir)
            if removed:
                print(f"[lps] removed {len(removed)} unfinished temporary file(s) left in {run_dir} by a killed run")
        yield


# --- resume provenance ----------------------------------------------------------------------


def check_resume(run_dir: Path, agent_name: str, cfg, agent_cfg) -> list[dict]:
    """Refuse a resume that would change what the run trained; return the recorded changes
    (batch size, learning rate) and append them to the run's resume log."""
    old_agent, old_cfg, old_agent_cfg, _ = load_config(run_dir)
    if agent_name != old_agent:
        raise ValueError(f"{run_dir} is a run of agent {old_agent!r}, not {agent_name!r}; resume cannot change it")
    old_flags, new_flags = flat(old_cfg), flat(cfg)
    fixed = [
        (f"--{name.replace('_', '-')}", old_flags[name], value)
        for name, value in new_flags.items()
        if name not in MAY_CHANGE | RECORDED_CHANGES and old_flags[name] != value
    ]
    fixed += [
        (f"--{f.name.replace('_', '-')}", getattr(old_agent_cfg, f.name), getattr(agent_cfg, f.name))
        for f in dataclasses.fields(agent_cfg)
        if getattr(old_agent_cfg, f.name) != getattr(agent_cfg, f.name)
    ]
    if checkpoint.exists(Path(run_dir) / ONLINE_DIR):
        # The online checkpoint's buffer and wave layout are sized by these: named before any
        # restore could fail on mismatching array shapes.
        for name in ("online_envs", "online_steps"):
            if old_flags[name] != new_flags[name]:
                flag = f"--{name.replace('_', '-')}"
                finished = finished_summary(run_dir, old_cfg) is not None
                raise ValueError(
                    f"{run_dir}'s online phase began with {flag} {old_flags[name]}, not {new_flags[name]}: "
                    f"its online checkpoint (replay buffer, waves of environments) is sized by it; "
                    + ("the run has finished, so train further in a new --run-dir" if finished
                       else f"resume with {flag} {old_flags[name]}")
                )  # fmt: skip
    if fixed:
        changes = "; ".join(f"{flag} {old!r} -> {new!r}" for flag, old, new in fixed)
        raise ValueError(
            f"resuming {run_dir} cannot change what it trains ({changes}): drop the flag(s) to resume, or start "
            "a new run in another --run-dir"
        )
    changes = [
        {"field": name, "old": old_flags[name], "new": new_flags[name]}
        for name in sorted(RECORDED_CHANGES)
        if old_flags[name] != new_flags[name]
    ]
    return changes


def outputs_past_a_checkpoint(run_dir: Path) -> str | None:
    """What a run directory holds that only a run that reached a checkpoint writes (its summary,
    metric rows at or past the step of its first scheduled checkpoint), or None. Such outputs
    with no checkpoint beside them mean the checkpoints were lost, not never written."""
    found = [SUMMARY_JSON] if (run_dir / SUMMARY_JSON).exists() else []
    try:
        cfg = load_config(run_dir)[1]
        first = min(cfg.save_every, cfg.steps) if cfg.save_every else cfg.steps
    except (OSError, ValueError):
        first = 0  # no readable config: any row counts
    path = run_dir / METRICS_JSONL
    try:
        steps = [row["step"] for row in read_rows(path)] if path.exists() else []
    except (OSError, ValueError):
        found.append(f"{METRICS_JSONL} (unreadable)")
    else:
        if steps and max(steps) >= first:
            found.append(f"{METRICS_JSONL} rows up to step {max(steps)}")
    return ", ".join(found) or None


def _refuse_lost_checkpoints(run) -> None:
    """A run whose outputs show it reached a checkpoint, but which has none now, is not trained
    again from step 0 over those outputs unless --overwrite says so."""
    found = outputs_past_a_checkpoint(run.dir)
    if found and not run.cfg.overwrite:
        raise FileNotFoundError(
            f"{run.dir} holds a run's outputs ({found}) but no checkpoint to continue from ({checkpoint.CHECKPOINT} "
            f"and {checkpoint.PREVIOUS} are missing): restore the checkpoint files to continue the run, or pass "
            "--overwrite to train it again from step 0, replacing those outputs"
        )


def prepare(runs, agent_name: str, agent_cfg, resume: bool) -> tuple[bool, list[list[dict]]]:
    """Decide how each run directory starts, before any data is loaded: returns whether to resume
    and, per run, the recorded setting changes. A run that died before its first checkpoint has
    nothing to resume: it restarts from step 0 (with or without --resume), saying so; one whose
    outputs show that it had a checkpoint, now gone, is refused without --overwrite."""
    started = [(run.dir / CONFIG_JSON).exists() for run in runs]
    saved = [checkpoint.exists(run.dir) for run in runs]
    for run, has_checkpoint in zip(runs, saved):
        if not has_checkpoint:
            _refuse_lost_checkpoints(run)
    if not resume:
        for run, has_config, has_checkpoint in zip(runs, started, saved):
            if has_config and has_checkpoint and not run.cfg.overwrite:
                raise FileExistsError(
                    f"{run.dir} already holds a run: resume it with `lps train --resume {run.dir}`, "
                    "or choose another --run-dir, or pass --overwrite"
                )
            if has_config and not has_checkpoint and not run.cfg.overwrite:
                print(f"[lps] {run.dir} holds a run that stopped before its first checkpoint: starting it afresh")
        return False, [[] for _ in runs]
    for run, has_config in zip(runs, started):
        if not has_config:
            raise FileNotFoundError(f"{run.dir} is not a run directory (no {CONFIG_JSON}); start it without --resume")
    changes = [check_resume(run.dir, agent_name, run.cfg, agent_cfg) for run in runs]
    if not any(saved):
        where = ", ".join(str(run.dir) for run in runs)
        print(f"[lps] {where} stopped before its first checkpoint: nothing to resume, starting from step 0")
        return False, [[] for _ in runs]
    if not all(saved):
        missing = ", ".join(str(run.dir) for run, ok in zip(runs, saved) if not ok)
        raise ValueError(
            f"{missing} has no checkpoint while the other seeds do; seeds trained together resume from one step: "
            "resume them one by one (`lps train --resume SEED_DIR`)"
        )
    return True, changes


def finished_summary(run_dir: Path, cfg) -> dict | None:
    """The run's summary if it already finished what `cfg` asks (its --steps and --online-steps),
    else None: a resume then has nothing to do."""
    path = Path(run_dir) / SUMMARY_JSON
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"a JSON {type(summary).__name__}, not an object")
    except FileNotFoundError:
        return None  # stopped before its end
    except (OSError, ValueError) as e:  # nothing in it is used: the resume writes it again
        print(f"[lps] warning: {path} is unreadable ({e}); it is ignored and written again when this resume "
              "finishes (with a steps/s only if this resume trains steps)")  # fmt: skip
        return None
    if summary.get("steps") != cfg.steps or summary.get("online_env_steps", 0) != cfg.online.steps:
        return None

    if not checkpoint.verify(Path(run_dir) / checkpoint.CHECKPOINT):  # damaged: resume from the fallback
        return None
    if cfg.eval.episodes:  # the final evaluation too: a resume re-runs it when its row is missing
        last = summary.get("gradient_steps", cfg.steps)
        try:
            rows = read_rows(Path(run_dir) / METRICS_JSONL)
        except (OSError, ValueError):
            return None
        if not any(r.get("step") == last and ("eval/success" in r or "eval/failed" in r) for r in rows):
            return None
    return summary


def record_changes(run_dir: Path, step: int, changes: list[dict]) -> None:
    """Append a resume's changed settings to the run's resume log, and say so."""
    if not changes:
        return
    what = ", ".join(f"--{c['field'].replace('_', '-')} {c['old']} -> {c['new']}" for c in changes)
    print(f"[lps] {run_dir}: from step {step} on, {what} (recorded in {RESUME_LOG})")
    entry = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": changes}
    with open(Path(run_dir) / RESUME_LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def check_resume_steps(steps: int, checkpoint_step: int, run_dirs: list[Path]) -> None:
    if steps < checkpoint_step:
        raise ValueError(
            f"--steps {steps} is below the step {checkpoint_step} of the checkpoint in "
            f"{', '.join(map(str, run_dirs))}: a run cannot be shortened; pass --steps {checkpoint_step} or more"
        )


# --- stopping on a signal -------------------------------------------------------------------


class StopOnSignal(SignalCatcher):
    """Within the block, once `armed` (the training loop has begun), SIGINT and SIGTERM only set
    `signum`: the loop checks it between device dispatches, writes a checkpoint and stops (the
    online phase stops between dispatches too, dropping the wave in progress: its checkpoints are
    taken between waves). Before that (loading or generating data) and on a
    second signal they act as usual, at once. Outside the main thread (where handlers cannot be
    installed) it does nothing."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def _handle(self, signum, frame):
        if self.signum is not None or not self.armed:  # asked twice, or nothing to save yet: stop now
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        message = (f"\n[lps] {signal.Signals(signum).name} received: stopping with a checkpoint after the "
                   "current dispatch (online: the wave in progress is dropped, the checkpoint at its start stands); "
                   "send it again to stop at once\n")  # fmt: skip
        try:  # os.write, not print: a handler that prints while the loop prints raises a reentrancy error
            os.write(2, message.encode())
        except OSError:
            pass

    def interrupted(self, step: int, resume_target: str | os.PathLike) -> TrainingInterrupted:
        name = signal.Signals(self.signum).name
        where = resume_target
        return TrainingInterrupted(
            self.signum,
            f"stopped by {name} at step {step}; checkpoint written, continue with `lps train --resume {where}`",
        )


# --- names and contents ---------------------------------------------------------------------


def default_run_dir(task: str, agent_name: str, seed: int) -> Path:
    return Path("runs") / task / agent_name / f"seed{seed}"


def seed_configs(cfg: TrainConfig, agent_name: str, task: str) -> list[TrainConfig]:
    """One single-seed config per seed; each seed's run directory is that of a single-seed run
    (`--run-dir` with several seeds is the parent of their `seed<k>` folders; default
    runs/<task>/<agent>/seed<k>, `task` being `RunPlan.name`)."""
    if not cfg.seeds:
        run_dir = cfg.run_dir or str(default_run_dir(task, agent_name, cfg.seed))
        return [dataclasses.replace(cfg, run_dir=run_dir)]
    out = []
    for seed in cfg.seeds:
        single = dataclasses.replace(cfg, seed=seed, seeds=())
        run_dir = Path(cfg.run_dir) / f"seed{seed}" if cfg.run_dir else default_run_dir(task, agent_name, seed)
        out.append(dataclasses.replace(single, run_dir=str(run_dir)))
    return out


def clear_outputs(run_dir: Path) -> None:
    """Remove a previous run's outputs (only with --overwrite) so none is mistaken for this run's."""
    names = (checkpoint.CHECKPOINT, checkpoint.PREVIOUS, SUMMARY_JSON, CONFIG_JSON, RESUME_LOG)
    for name in (*names, "metrics.csv", "metrics.jsonl", "curves.png"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / ONLINE_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
