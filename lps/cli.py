"""The `lps` command: train, eval, data (generate, prepare, robot), agents, report, toy, sweep,
serve, robot-sim and serve-replay; each command's page is listed in README.md (docs/training.md
for `lps train` and `lps eval`).

Every field of the training config and of the chosen agent's config is a flag of `lps train`
(see `lps train --agent NAME --help`); unknown flags and impossible values are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

USAGE = __doc__.split("\n\n")[1]


def _train(argv: list[str]) -> int:
    import tyro

    argv = _split_commas(argv, "--seeds")

    from lps import agents
    from lps.training import config
    from lps.training.loop import train

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", default=None)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--resume", default=None)
    pre.add_argument("--run-dir", default=None)
    known, _ = pre.parse_known_args(argv)
    presets = _flag_values(argv, "--preset")
    if len(presets) > 1:
        raise ValueError(
            f"--preset is given {len(presets)} times ({', '.join(presets)}); give one: a preset sets many fields at "
            "once, and single flags after it override them"
        )

    if known.resume is not None:
        resume = _resume_target(known.resume, known.run_dir)
        # A run directory, or the parent of the seed<k> directories of seeds trained together.
        seed_dirs = (
            []
            if os.path.exists(os.path.join(resume, config.CONFIG_JSON))
            else sorted(p.parent for p in Path(resume).glob(f"seed*/{config.CONFIG_JSON}"))
        )
        if not os.path.exists(os.path.join(resume, config.CONFIG_JSON)):
            for orphan in sorted(Path(resume).glob("seed*")):
                if orphan.is_dir() and not (orphan / config.CONFIG_JSON).exists():
                    print(
                        f"[lps] warning: {orphan} has no {config.CONFIG_JSON} (it stopped before starting): it is not "
                        f"resumed; start it with `lps train --seed N --run-dir {orphan}` and the others' flags"
                    )
        agent_name, train_cfg, agent_cfg, _ = config.load_config(seed_dirs[0] if seed_dirs else resume)
        if known.agent not in (None, agent_name):
            raise ValueError(f"{resume} is a run of agent {agent_name!r}, not {known.agent!r}")
        seeds = tuple(config.load_config(d)[1].seed for d in seed_dirs)
        train_cfg = dataclasses.replace(train_cfg, run_dir=resume, seeds=seeds)
        argv = _drop_flag(argv, "--run-dir")
    else:
        agent_name = known.agent or "lps"
        train_cfg, agent_cfg = config.preset(known.preset or "paper", agents.config_class(agent_name))

    Args = dataclasses.make_dataclass(
        "Args",
        [
            ("agent", str, dataclasses.field(default=agent_name)),
            ("preset", str, dataclasses.field(default=known.preset or "paper")),
            ("resume", "str | None", dataclasses.field(default=known.resume)),
            ("train", Annotated[config.TrainConfig, tyro.conf.OmitArgPrefixes], dataclasses.field(default=train_cfg)),
            (
                "agent_config",
                Annotated[type(agent_cfg), tyro.conf.OmitArgPrefixes],
                dataclasses.field(default=agent_cfg),
            ),
        ],
    )
    Args.__doc__ = f"Train agent {agent_name!r} (defaults shown are those of preset {known.preset or 'paper'!r})."
    args = tyro.cli(Args, args=argv, prog="lps train")
    train(agent_name, args.train, args.agent_config, resume=known.resume is not None)
    return 0


def _resume_target(resume: str, run_dir: str | None) -> str:
    """The run directory `--resume` names; `--run-dir` beside it must name the same one."""
    from lps.files import user_path

    if not resume.strip():
        raise ValueError("--resume needs a run directory, got an empty string")
    resume = user_path(resume)
    if run_dir is not None and os.path.abspath(user_path(run_dir)) != os.path.abspath(resume):
        raise ValueError(
            f"--run-dir {run_dir} differs from --resume {resume}: a resume continues the run where it is; "
            "drop --run-dir (to start a new run elsewhere, leave out --resume)"
        )
    return resume


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """The values given to `flag` (as `flag VALUE` or `flag=VALUE`), in order."""
    return [arg.split("=", 1)[1] if arg != flag else argv[i + 1]
            for i, arg in enumerate(argv) if arg.startswith(flag + "=") or (arg == flag and i + 1 < len(argv))]  # fmt: skip


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value (given as `flag VALUE` or `flag=VALUE`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _split_commas(argv: list[str], flag: str) -> list[str]:
    """Accept `--seeds 0,1,2` as well as `--seeds 0 1 2`."""
    out, in_flag = [], False
    for arg in argv:
        if arg.startswith("--"):
            in_flag = arg == flag
            if arg.startswith(flag + "="):
                out.append(flag)
                out.extend(x for x in arg.split("=", 1)[1].split(",") if x)
                continue
        elif in_flag:
            out.extend(x for x in arg.split(",") if x)
            continue
        out.append(arg)
    return out


MAX_SEED = 2**32 - 1  # lps.training.config.MAX_SEED (not imported: it pulls in JAX)


def _seed_arg(text: str) -> int:
    """argparse type of every --seed: an integer from 0 to MAX_SEED (JAX and NumPy seeds are unsigned 32-bit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_SEED} (seeds are unsigned 32-bit integers), "
                                         f"got {value}")  # fmt: skip
    return value


def _eval(argv: list[str]) -> int:
    from lps.training.evaluate import MAX_EVAL_EPISODES

    p = argparse.ArgumentParser(prog="lps eval", description="Evaluate a run's saved policy.")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=None,
                   help=f"default: the run's eval episodes (at most {MAX_EVAL_EPISODES})")  # fmt: skip
    p.add_argument("--seed", type=_seed_arg, default=None, help="evaluation seed (default: the run's seed)")
    p.add_argument("--workers", type=int, default=None, help="env worker processes (default: one per core; 0: none)")
    p.add_argument("--chunk-timeout", type=float, default=None, metavar="SECONDS",
                   help="a worker that takes longer to reset or execute one action chunk is killed and the "
                        "evaluation fails, naming its episodes (default: the run's --eval-chunk-timeout, 60)")  # fmt: skip
    p.add_argument("--dataset", default=None,
                   help="held-out recorded episodes (robot folder or npz): report the action error instead of rolling out")  # fmt: skip
    p.add_argument("--skip-bad", action="store_true", help="with --dataset DIR: skip bad episodes (listed)")
    a = p.parse_args(argv)
    if a.skip_bad and a.dataset is None:
        p.error("--skip-bad applies to the episodes of --dataset; give --dataset DIR")
    if a.episodes is not None and a.episodes < 1:
        p.error("--episodes must be at least 1")
    if a.episodes is not None and a.episodes > MAX_EVAL_EPISODES:
        p.error(f"--episodes {a.episodes} is above {MAX_EVAL_EPISODES}: every episode's results are kept in memory "
                "(the paper evaluates 50); evaluate fewer")  # fmt: skip
    if a.workers is not None and a.workers < 0:
        p.error("--workers must be >= 0")
    if a.chunk_timeout is not None and not 0 < a.chunk_timeout < float("inf"):
        p.error(f"--chunk-timeout must be a positive number of seconds, got {a.chunk_timeout}")
    if a.dataset is not None:
        from lps.deploy.offline_eval import evaluate_on_dataset

        result = evaluate_on_dataset(a.run_dir, a.dataset, seed=a.seed, skip_bad=a.skip_bad)
        print(" ".join(f"{k}={v:.4g}" for k, v in result.items()))
        return 0
    from lps.deploy.policy import evaluate_run

    result = evaluate_run(a.run_dir, episodes=a.episodes, seed=a.seed, workers=a.workers, chunk_timeout=a.chunk_timeout)
    print(" ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return 0


def _data(argv: list[str]) -> int:
    from lps.data import tasks

    if argv[:1] == ["robot"]:
        return _data_robot(argv[1:])

    p = argparse.ArgumentParser(prog="lps data", description="Generate or prepare OGBench play data; check robot data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate <env>-play-v0.npz and -val.npz with OGBench's oracles")
    g.add_argument("env", help=f"one of {', '.join(tasks.DATA_ENVS)}")
    g.add_argument("--episodes", type=int, default=1000, help="training episodes (+10%% validation)")
    g.add_argument("--seed", type=_seed_arg, default=0)
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
    a = p.parse_args(argv)
    if a.cmd == "generate" and a.workers is not None and a.workers < 1:
        g.error(f"--workers must be at least 1 (worker processes), got {a.workers}")
    data_dir = os.path.expanduser(a.data_dir) if a.data_dir else tasks.default_data_dir()
    if a.cmd == "generate":
        from lps.data.generate import generate

        train_path, val_path = generate(
            a.env, data_dir, a.episodes, a.seed, a.workers, max_episode_steps=a.max_episode_steps,
            overwrite=a.overwrite,
        )  # fmt: skip
        print(f"[lps] wrote {train_path} and {val_path}")
    else:
        import io

        import numpy as np

        from lps.data.generate import dataset_paths
        from lps.files import atomic_write

        out = Path(os.path.expanduser(a.out))
        if out.is_dir():
            raise IsADirectoryError(f"--out {a.out} is a folder; give a file name, e.g. {out / (a.task + '.npz')}")
        task = tasks.parse_task(a.task, a.reward)
        data = tasks.load_task(task, data_dir, chunk_len=1, episodes_if_missing=a.episodes)
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
    return 0


def _data_robot(argv: list[str]) -> int:
    import tyro

    from lps.data.robot import RobotDataConfig, load_folder

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
    from lps.data import normalize, robot_cache
    from lps.data.robot import summary

    print(summary(data, a.robot, a.chunk_len))
    normalize.resolve_mode(data, a.robot.normalize)  # says what training will do with the units
    print(f"[lps] cache: {robot_cache.size_bytes(Path(a.folder)) / 2**20:.1f} MiB in {Path(a.folder) / robot_cache.CACHE_DIR} "
          "(shared with `lps train`; delete it to reclaim the space)")  # fmt: skip
    flags = " ".join(shlex.quote(arg) for arg in argv if arg != a.folder)  # the same flags read the same cache
    print(f"[lps] train with `lps train --preset robot --dataset {shlex.quote(a.folder)}{' ' + flags if flags else ''}`")
    return 0


def _agents(argv: list[str]) -> int:
    from lps.agents import REGISTRY, published_defaults

    for name, (cls, cfg_cls) in sorted(REGISTRY.items()):
        cfg = published_defaults(name, cfg_cls())
        keys = ", ".join(f"{k}={getattr(cfg, k) if getattr(cfg, k) is not None else 'per-env'}" for k in cls.key_fields)
        print(f"{name:10s} {cls.summary}\n{'':10s} {keys}")
        for note in getattr(cls, "notes", ()):
            print(f"{'':10s} - {note}")
    return 0


def _toy(argv: list[str]) -> int:
    from lps.data import toy

    p = argparse.ArgumentParser(prog="lps toy", description="Toy bandits and the paper's analysis figures.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the toy tasks")
    f2 = sub.add_parser("figure2", help="dataset vs policy samples: QC-FQL at several alphas and LPS")
    f2.add_argument("--alphas", type=float, nargs="+", default=[0.03, 3.0, 300.0])
    f3 = sub.add_parser("figure3", help="pulled-back critic vs a distilled latent critic: gradient cosine")
    for f in (f2, f3):
        f.add_argument("--task", default="four-gaussians", choices=list(toy.TASKS))
        f.add_argument("--steps", type=int, default=3000)
        f.add_argument("--seed", type=_seed_arg, default=0)
        f.add_argument("--out", default=None, help="default: runs/toy/<figure>")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for name, task in toy.TASKS.items():
            print(f"toy-{name:16s} {task.dim:3d}-D actions, best action starts {task.best[:2].round(3).tolist()}")
        return 0
    from lps.experiments import toy_analysis as analysis

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


def _report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lps report",
        description="Success tables with 95 % bootstrap CIs, IQM, learning curves and alpha sensitivity "
        "from every run below RUNS_DIR (needs lps[report]).",
    )
    p.add_argument("runs_dir", help="a folder holding run directories at any depth")
    p.add_argument("--out", default=None, help="default: RUNS_DIR/report")
    p.add_argument("--reps", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=_seed_arg, default=0, help="bootstrap seed")
    p.add_argument("--final", choices=["last", "max"], default="last", help="a run's score: last or best evaluation")
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error("--reps must be at least 1")
    from lps.experiments.report import report

    out = a.out and os.path.expanduser(a.out)
    result = report(os.path.expanduser(a.runs_dir), out=out, reps=a.reps, seed=a.seed, final=a.final)
    print(result["markdown"])
    print(f"[lps] wrote {len(result['files'])} files to {result['files'][-1].parent}")
    return 0


def _serve(argv: list[str]) -> int:
    from lps.deploy.serve import main as serve_main

    return serve_main(argv)


def _serve_replay(argv: list[str]) -> int:
    from lps.deploy.replay_check import main as replay_main

    return replay_main(argv)


def _robot_sim(argv: list[str]) -> int:
    from lps.deploy.robot_sim import main as robot_sim_main

    return robot_sim_main(argv)


def _sweep(argv: list[str]) -> int:
    from lps.experiments.sweep import main as sweep_main

    return sweep_main(argv)


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "data": _data,
    "agents": _agents,
    "toy": _toy,
    "report": _report,
    "sweep": _sweep,
    "serve": _serve,
    "serve-replay": _serve_replay,
    "robot-sim": _robot_sim,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nlps: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    from lps.training.rundir import TrainingInterrupted

    try:
        return COMMANDS[argv[0]](argv[1:])
    except TrainingInterrupted as e:
        print(f"lps {argv[0]}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"lps {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"lps {argv[0]}: error: {_os_error(e)}", file=sys.stderr)
        return 1
    except (ValueError, ImportError, RuntimeError, MemoryError) as e:
        stopped = getattr(e, "exit_code", None)  # a clean stop on a signal (lps.data.generate.GenerationStopped)
        print(f"lps {argv[0]}: {'' if stopped else 'error: '}{e}", file=sys.stderr)
        return stopped or 1


def _os_error(e: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do."""
    import errno

    if e.errno is None or e.strerror is None:  # raised by lps with its own message
        return str(e.args[0] if len(e.args) == 1 else e)
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    hint = {
        errno.ENOSPC: "the disk is full: free some space; files written before stay intact, so resume after",
        errno.EACCES: "no permission: choose a folder you can write to",
        errno.EROFS: "the file system is read-only: choose another folder",
        errno.ENAMETOOLONG: "a name is longer than the file system allows: choose a shorter path",
        errno.EISDIR: "a folder is where a file should be: give a file path",
        errno.ENOTDIR: "a file is where a folder should be: choose another path",
        errno.EDQUOT: "the disk quota is exceeded: free some space",
    }.get(e.errno, "")
    return f"{e.strerror}" + (f": {paths}" if paths else "") + (f" ({hint})" if hint else "")


if __name__ == "__main__":
    sys.exit(main())
