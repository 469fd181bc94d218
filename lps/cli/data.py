"""`lps data generate|prepare|robot`: OGBench play data, a task's relabelled npz, a robot folder checked and cached."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shlex
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from lps.cli.args import seed_arg
from lps.data import normalize, robot_cache, tasks
from lps.data.generate import dataset_paths, generate
from lps.data.robot import RobotDataConfig, load_folder, summary
from lps.files import atomic_write


def data_command(argv: list[str]) -> int:
    if argv[:1] == ["robot"]:
        return data_robot_command(argv[1:])
    p, generate_parser = _parser(tasks.DATA_ENVS)
    a = p.parse_args(argv)
    if a.cmd == "generate" and a.workers is not None and a.workers < 1:
        generate_parser.error(f"--workers must be at least 1 (worker processes), got {a.workers}")
    data_dir = os.path.expanduser(a.data_dir) if a.data_dir else tasks.default_data_dir()
    if a.cmd == "generate":
        train_path, val_path = generate(
            a.env, data_dir, a.episodes, a.seed, a.workers, max_episode_steps=a.max_episode_steps,
            overwrite=a.overwrite,
        )  # fmt: skip
        print(f"[lps] wrote {train_path} and {val_path}")
    else:
        _prepare(a.task, a.out, a.reward, data_dir, a.episodes)
    return 0


def _parser(envs) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """`lps data`'s parser and that of its `generate` command."""
    p = argparse.ArgumentParser(prog="lps data", description="Generate or prepare OGBench play data; check robot data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate <env>-play-v0.npz and -val.npz with OGBench's oracles")
    g.add_argument("env", help=f"one of {', '.join(envs)}")
    g.add_argument("--episodes", type=int, default=1000, help="training episodes (+10%% validation)")
    g.add_argument("--seed", type=seed_arg, default=0)
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: all cores, at most 8; more than the cores are capped)")  # fmt: skip
    g.add_argument("--data-dir", default=None, help="default: $OGBENCH_DATA_DIR or ~/.ogbench/data")
    g.add_argument("--max-episode-steps", type=int, default=1001)
    g.add_argument("--overwrite", action="store_true", help="replace existing play data files")
    r = sub.add_parser("prepare", help="write a task's relabelled row-layout npz (trains without OGBench)")
    r.add_argument("task", help="e.g. cube-single-play-singletask-task1-v0")
    r.add_argument("--out", required=True)
    r.add_argument("--reward", choices=["paper", "dense", "sparse"], default="paper")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--episodes", type=int, default=1000, help="episodes to generate if the play data is missing")
    return p, g


def _prepare(task_name: str, out_arg: str, reward: str, data_dir: str, episodes: int) -> None:
    """`lps data prepare`: the task's relabelled rows as an npz, and its validation split beside it."""
    out = Path(os.path.expanduser(out_arg))
    if out.is_dir():
        raise IsADirectoryError(f"--out {out_arg} is a folder; give a file name, e.g. {out / (task_name + '.npz')}")
    task = tasks.parse_task(task_name, reward)
    data = tasks.load_task(task, data_dir, chunk_len=1, episodes_if_missing=episodes)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    atomic_write(out, buf.getvalue())
    print(f"[lps] wrote {out}: {len(data['observations'])} rows of {task.name}; train with --dataset {out}")
    val_path = dataset_paths(task.env, data_dir)[1]
    if val_path.exists():  # the validation split, relabelled the same way (docs/outputs.md, "Validation split")
        val_out = out.with_name(out.stem + "-val.npz")
        buf = io.BytesIO()
        np.savez_compressed(buf, **tasks.load_task_file(task, val_path, chunk_len=1))
        atomic_write(val_out, buf.getvalue())
        print(f"[lps] wrote {val_out}: its validation split; add --val-dataset {val_out}")


def data_robot_command(argv: list[str]) -> int:
    Args = dataclasses.make_dataclass(
        "Args",
        [
            ("folder", tyro.conf.Positional[str]),
            ("chunk_len", int, dataclasses.field(default=5)),
            ("robot", Annotated[RobotDataConfig, tyro.conf.OmitArgPrefixes], dataclasses.field(default=RobotDataConfig())),
        ],
    )
    Args.__doc__ = ("Read, validate and cache a folder of robot episodes (success/*.h5, failure/*.h5) as "
                    "`lps train --dataset DIR` will (same flags; --chunk-len sets where the outcome reward goes).")  # fmt: skip
    a = tyro.cli(Args, args=argv, prog="lps data robot")
    data = load_folder(a.folder, a.robot, a.chunk_len)
    print(summary(data, a.robot, a.chunk_len))
    normalize.resolve_mode(data, a.robot.normalize)  # says what training will do with the units
    print(f"[lps] cache: {robot_cache.size_bytes(Path(a.folder)) / 2**20:.1f} MiB in {Path(a.folder) / robot_cache.CACHE_DIR} "
          "(shared with `lps train`; delete it to reclaim the space)")  # fmt: skip
    flags = " ".join(shlex.quote(arg) for arg in argv if arg != a.folder)  # the same flags read the same cache
    print(f"[lps] train with `lps train --preset robot --dataset {shlex.quote(a.folder)}{' ' + flags if flags else ''}`")
    return 0
