"""Helpers shared by the tests: the CLI in a subprocess and small toy training configs."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lps.agents import LPSConfig
from lps.training.config import TrainConfig, preset

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


def toy_config(run_dir, **overrides) -> TrainConfig:
    """The toy preset, shortened: no evaluation, small batches, a checkpoint every 100 steps."""
    cfg, _ = preset("toy", LPSConfig)
    small = dict(steps=200, log_every=100, eval_every=0, save_every=100, eval_episodes=0, batch_size=64,
                 run_dir=str(run_dir), progress=False)  # fmt: skip
    return dataclasses.replace(cfg, **(small | overrides))


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run directory (shared fixtures are never modified: tests copy them)."""
    shutil.copytree(src, dst)  # copy2: bytes and mtimes preserved
    return dst
