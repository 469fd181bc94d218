"""Helpers shared by the tests: the CLI in a subprocess and small toy training configs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from lps.agents import LPSConfig, config_class, resolve_config
from lps.training.config import TrainConfig, agent_overrides, preset, with_flags

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd, extra_path: Path | None = None, timeout=180, check=False) -> subprocess.CompletedProcess:
    """`python -m lps.cli ARGS` on the CPU, importing this checkout's package; `check` fails loudly on a
    non-zero exit."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="200", OGBENCH_DATA_DIR=str(Path(cwd) / "ogbench-data"))
    paths = [str(extra_path) if extra_path else None, str(ROOT), os.environ.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    out = subprocess.run(
        [sys.executable, "-m", "lps.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check:
        assert out.returncode == 0, (
            f"lps {' '.join(map(str, args))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
        )
    return out


def default_ctrl_c() -> None:
    """`preexec_fn` of a child that is stopped with SIGINT: Ctrl-C acts (a shell's background job,
    `cmd &`, starts with SIGINT ignored, and a child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def small_config(name, hidden=(32, 32), **kw):
    """Agent `name`'s config with every network `hidden` wide, resolved for cube-single task 1."""
    cls = config_class(name)
    cfg = cls(**agent_overrides({"hidden": hidden}, cls), **kw)
    return resolve_config(name, cfg, "cube-single-play-singletask-task1-v0")


def toy_config(run_dir, **overrides) -> TrainConfig:
    """The toy preset, shortened: no evaluation, small batches, a checkpoint every 100 steps."""
    cfg, _ = preset("toy", LPSConfig)
    small = dict(steps=200, log_every=100, eval_every=0, save_every=100, eval_episodes=0, batch_size=64,
                 run_dir=str(run_dir), progress=False)  # fmt: skip
    return with_flags(cfg, **(small | overrides))


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run directory (shared fixtures are never modified: tests copy them)."""
    shutil.copytree(src, dst)  # copy2: bytes and mtimes preserved
    return dst


def drift_episodes(episodes: int, steps: int, obs_dim: int = 4, action_dim: int = 2) -> dict:
    """Row-layout episodes of a drifting state with actions that depend on it and -1 rewards (the
    served-policy tests' offline data; `np.savez(path, **data)` makes it a dataset file)."""
    rng = np.random.default_rng(0)
    rows = episodes * steps
    obs = np.cumsum(rng.normal(0, 0.1, (rows, obs_dim)), axis=0).astype(np.float32)
    actions = np.tanh(obs[:, :action_dim] + rng.normal(0, 0.05, (rows, action_dim))).astype(np.float32)
    terminals = np.zeros(rows, np.float32)
    terminals[steps - 1 :: steps] = 1
    return dict(observations=obs, actions=actions, rewards=-np.ones(rows, np.float32), terminals=terminals)
